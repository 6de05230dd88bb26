"""Child-process helpers shared by the embedded broker and the embedded PostgreSQL.

Children run in their own process group (so a Ctrl-C aimed at the parent's terminal group does not
reach them) and, on Linux, get a parent-death signal so they never outlive the thread that
started them. PR_SET_PDEATHSIG fires when the *thread* that forked the child exits: start
children from a thread that lives as long as they should (normally the main thread).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

log = logging.getLogger(__name__)

HOST = "127.0.0.1"

_PR_SET_PDEATHSIG = 1


class StartupError(RuntimeError):
    """A child process exited or did not become ready in time."""


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """Return a preexec_fn that delivers `sig` to the child when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork, never inside the child
    parent = os.getpid()

    def preexec() -> None:
        # Runs after subprocess dropped privileges (user=/group=), which would clear the setting.
        if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def spawn(
    args: Sequence[str | Path],
    *,
    output: IO[bytes] | int,
    death_signal: signal.Signals,
    user: str | None = None,
    group: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child in its own session that receives `death_signal` when this process dies."""
    return subprocess.Popen(
        [str(arg) for arg in args],
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent(death_signal),
        user=user,
        group=group,
        extra_groups=[] if user is not None else None,
        env=env,
    )


def terminate(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float) -> None:
    """Send `sig` and wait up to `timeout` s; then SIGKILL the child's whole process group."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning(
            "child did not stop, killing group pid=%d signal=%s timeout_s=%.1f",
            proc.pid,
            sig.name,
            timeout,
        )
        # The leader is alive, so the group id is still ours: safe to kill the group.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def port_open(host: str, port: int) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def log_tail(path: Path | None, lines: int = 25) -> str:
    """The last lines of a log file, formatted for an error message ('' if there is none)."""
    if path is None or not path.exists():
        return ""
    tail = path.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {path} ---\n" + "\n".join(tail)


def wait_ready(
    proc: subprocess.Popen[bytes],
    probe: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    log_file: Path | None,
) -> None:
    """Poll `probe` until it is true; raise StartupError if the child exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise StartupError(
                f"{what} exited with code {proc.returncode} before it was ready"
                + log_tail(log_file)
            )
        if probe():
            return
        if time.monotonic() >= deadline:
            raise StartupError(f"{what} not ready after {timeout:.0f} s" + log_tail(log_file))
        time.sleep(0.05)


def wait_for_port(
    proc: subprocess.Popen[bytes],
    host: str,
    port: int,
    *,
    timeout: float,
    what: str,
    log_file: Path | None,
) -> None:
    """Wait until the child's host:port accepts TCP connections."""
    wait_ready(proc, lambda: port_open(host, port), timeout=timeout, what=what, log_file=log_file)


class ChildServer:
    """A server on HOST:port run as a child process: pid, stop, and `with` to start and stop.

    Subclasses set `name`, `stop_signal`, `port`, and implement `start()`.
    """

    name = "server"
    stop_signal = signal.SIGTERM
    port: int
    _proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """Pid of the running server, None when stopped."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    def _check_can_start(self) -> None:
        if self.pid is not None:
            raise RuntimeError(f"{self.name} already running pid={self.pid}")
        if port_open(HOST, self.port):
            raise StartupError(f"cannot start {self.name}: port {HOST}:{self.port} is in use")

    def stop(self, timeout: float = 30.0) -> None:
        """Send the stop signal, SIGKILL the process group after `timeout` s. No-op if stopped."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        terminate(proc, self.stop_signal, timeout)
        log.info("%s stopped pid=%d returncode=%s", self.name, proc.pid, proc.returncode)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
