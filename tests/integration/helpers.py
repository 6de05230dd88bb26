"""Helpers for integration tests: run platform services as real processes, wait for outcomes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from kafka import KafkaConsumer, TopicPartition

ROOT = Path(__file__).resolve().parents[2]


class Service:
    """`python -m <module>` as a child process with the platform's environment variables."""

    def __init__(self, module: str, env: dict[str, str], log_file: Path) -> None:
        self.module = module
        self.env = {**os.environ, **env}
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module], cwd=ROOT, env=self.env, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


@contextmanager
def running(module: str, env: dict[str, str], log_file: Path) -> Iterator[Service]:
    service = Service(module, env, log_file).start()
    try:
        yield service
    finally:
        service.stop()


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, what: str, log: Callable[[], str] = str
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{log()}")
        time.sleep(0.2)


def query(dsn: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        try:
            return conn.execute(sql, params).fetchall()
        except psycopg.errors.UndefinedTable:
            return []


def recorded_ids(dsn: str, customer_prefix: str) -> list[str]:
    """event_id of every recorded event of customers whose id starts with the prefix."""
    rows = query(
        dsn,
        "SELECT event_id::text FROM crm_intake WHERE customer_id LIKE %s",
        (customer_prefix + "%",),
    )
    return [str(r[0]) for r in rows]


def stored_count(dsn: str, customer_prefix: str) -> int:
    rows = query(
        dsn,
        "SELECT count(*) FROM crm_events WHERE originator_id LIKE %s",
        (customer_prefix + "%",),
    )
    return int(rows[0][0]) if rows else 0


def projected_at_least(dsn: str, versions: dict[str, int]) -> bool:
    """Whether the 360 of each customer is at (at least) the given version."""
    rows = query(
        dsn,
        "SELECT customer_id, version FROM rm_customer_360 WHERE customer_id = ANY(%s)",
        (list(versions),),
    )
    got = {str(c): int(v) for c, v in rows}  # type: ignore[call-overload]
    return all(got.get(c, 0) >= v for c, v in versions.items())


def pipeline_env(bootstrap: str, dsn: str, **settings: str) -> dict[str, str]:
    """The environment of the platform's services for one test's pipeline: its own consumer
    groups, short session timeouts, no post-purchase follow-ups (a test that counts a customer's
    events sees only what it sent; the follow-up test turns them on), and any `CRM_*` settings
    given."""
    tag = uuid.uuid4().hex[:8]
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DATABASE_URL": dsn,
        "CRM_RECORDER_GROUP": f"recorder-{tag}",
        "CRM_PROJECTOR_GROUP": f"projector-{tag}",
        "CRM_SESSION_TIMEOUT_MS": "3000",
        "CRM_FOLLOWUP_PURCHASE_THRESHOLDS": "{}",
        **settings,
    }


def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return consumer.end_offsets(partitions)  # type: ignore[no-any-return]
    finally:
        consumer.close()
