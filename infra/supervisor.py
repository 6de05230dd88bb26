"""Runs the platform's services as child processes, restarts one that dies, stops them all."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from infra.processes import spawn, terminate

log = logging.getLogger("crm.supervisor")

_MAX_BACKOFF_S = 30.0
_STOP_TIMEOUT_S = 15.0


@dataclass
class Child:
    """One service: `python -m <module>` with extra environment variables."""

    name: str
    module: str
    env: dict[str, str]
    args: tuple[str, ...] = ()
    restart: bool = True  # False: a one-shot job, restarted only if it fails
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    restart_at: float = 0.0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.proc = spawn(
            [sys.executable, "-m", self.module, *self.args],
            output=sys.stderr.fileno(),
            death_signal=signal.SIGTERM,
            env=self.env,
        )
        self.started_at = time.monotonic()
        log.info("event=service_started service=%s pid=%d", self.name, self.proc.pid)


class Supervisor:
    """Starts children in order, restarts any that exits (with backoff), stops in reverse."""

    def __init__(self, children: list[Child], watchdog: Callable[[], None] = lambda: None) -> None:
        self.children = children
        self.watchdog = watchdog
        self._stopping = False

    def request_stop(self, *_: object) -> None:
        self._stopping = True

    def run(self) -> None:
        """Block until SIGINT or SIGTERM, keeping every child alive."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.request_stop)
        for child in self.children:
            child.start()
        try:
            while not self._stopping:
                self.watchdog()
                for child in self.children:
                    self._check(child)
                time.sleep(0.5)
        finally:
            self.stop()

    def stop(self) -> None:
        for child in reversed(self.children):
            if child.proc is not None:
                terminate(child.proc, signal.SIGTERM, timeout=_STOP_TIMEOUT_S)
                log.info("event=service_stopped service=%s code=%s", child.name,
                         child.proc.returncode)  # fmt: skip

    def _check(self, child: Child) -> None:
        assert child.proc is not None
        code = child.proc.poll()
        if code is None or self._stopping or (code == 0 and not child.restart):
            return
        now = time.monotonic()
        if child.restart_at == 0.0:
            if now - child.started_at > 60:
                child.restarts = 0  # it ran fine for a while: start the backoff afresh
            backoff = min(_MAX_BACKOFF_S, 2.0**child.restarts)
            child.restart_at = now + backoff
            log.warning("event=service_exited service=%s code=%s restart_in_s=%.0f",
                        child.name, code, backoff)  # fmt: skip
        elif now >= child.restart_at:
            child.restarts += 1
            child.restart_at = 0.0
            child.start()
