"""The embedded stack itself: broker, topics, PostgreSQL, and the life cycle of their processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil
import psycopg
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from events import topics
from infra.broker import EmbeddedBroker
from infra.ports import free_port
from infra.postgres import SYSTEM_USER, EmbeddedPostgres
from infra.topics import TopicMismatchError, ensure_topics

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
TOPIC_PARTITIONS = 6  # as the broker fixture creates the platform topics


@pytest.fixture
def pg_folder(postgres_root: Path) -> Path:
    """An empty folder for this test's own PostgreSQL (data in `data`, log beside it)."""
    folder = postgres_root / uuid.uuid4().hex
    folder.mkdir()
    return folder


def _partition_counts(bootstrap: str, names: Iterable[str]) -> dict[str, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(names))}
    finally:
        admin.close()


def _list_topics(bootstrap: str) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def _alive(pid: int) -> bool:
    """True if pid runs (a zombie waiting for an absent reaper does not count)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pids: Iterable[int], timeout: float = 10.0) -> list[int]:
    """Wait until every pid is gone; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    alive = [pid for pid in pids if _alive(pid)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [pid for pid in alive if _alive(pid)]
    return alive


def _postgres_pids(server: EmbeddedPostgres) -> list[int]:
    assert server.pid is not None
    return [server.pid, *(p.pid for p in psutil.Process(server.pid).children(recursive=True))]


def test_broker_produces_and_consumes_on_six_partitions(broker: EmbeddedBroker) -> None:
    topic = f"test.roundtrip.{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, TOPIC_PARTITIONS, names=[topic])
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    sent = {f"customer-{i}".encode(): f"event-{i}".encode() for i in range(60)}
    for key, value in sent.items():
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=f"test-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    received: dict[bytes, bytes] = {}
    partitions: set[int] = set()
    deadline = time.monotonic() + 30
    try:
        while len(received) < len(sent) and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                partitions.add(tp.partition)
                received.update((r.key, r.value) for r in records)
    finally:
        consumer.close()

    assert received == sent
    assert partitions == set(range(TOPIC_PARTITIONS))


def test_ensure_topics_creates_all_platform_topics_idempotently(broker: EmbeddedBroker) -> None:
    ensure_topics(broker.bootstrap, TOPIC_PARTITIONS)
    ensure_topics(broker.bootstrap, TOPIC_PARTITIONS)

    assert _partition_counts(broker.bootstrap, topics.ALL) == dict.fromkeys(
        topics.ALL, TOPIC_PARTITIONS
    )
    with pytest.raises(TopicMismatchError, match="expected 3"):
        ensure_topics(broker.bootstrap, 3)


def test_broker_restart_comes_back_empty(
    broker: EmbeddedBroker, restart_broker: Callable[[], None]
) -> None:
    extra = f"test.restart.{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, TOPIC_PARTITIONS, names=[extra])
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    producer.send(topics.TOUCHPOINTS, key=b"customer-1", value=b"before restart").get(10)
    producer.close()
    old_pid = broker.pid

    restart_broker()

    assert broker.pid is not None
    assert broker.pid != old_pid
    assert _list_topics(broker.bootstrap) == set(topics.ALL)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    try:
        parts = [TopicPartition(topics.TOUCHPOINTS, p) for p in range(TOPIC_PARTITIONS)]
        assert set(consumer.end_offsets(parts).values()) == {0}
    finally:
        consumer.close()


def test_postgres_is_reachable(database_url: str, fresh_database: str) -> None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    assert int(row[0]) >= 180000

    with psycopg.connect(fresh_database) as conn:
        conn.execute("CREATE TABLE only_here (id int)")
        current = conn.execute("SELECT current_database()").fetchone()
    assert current is not None
    assert fresh_database.endswith("/" + current[0])


def test_postgres_data_survives_stop_and_start(pg_folder: Path) -> None:
    data_dir, port = pg_folder / "data", free_port()
    with EmbeddedPostgres(data_dir, port) as server, psycopg.connect(server.url) as conn:
        conn.execute("CREATE TABLE kept (note text)")
        conn.execute("INSERT INTO kept VALUES ('still here')")

    with EmbeddedPostgres(data_dir, port) as server, psycopg.connect(server.url) as conn:
        rows = conn.execute("SELECT note FROM kept").fetchall()
    assert rows == [("still here",)]


def test_postgres_starts_over_a_stale_postmaster_pid(pg_folder: Path) -> None:
    data_dir = pg_folder / "data"
    server = EmbeddedPostgres(data_dir, free_port())
    server.start()
    pids = _postgres_pids(server)
    lock = (data_dir / "postmaster.pid").read_text()
    os.kill(pids[0], signal.SIGKILL)  # as a crash would: the lock file stays behind
    server.stop()  # reaps the killed postmaster
    assert _wait_gone(pids) == []
    assert (data_dir / "postmaster.pid").exists()

    server.start()  # dead pid in the lock file: postgres ignores it
    server.stop()

    # A lock file whose pid was reused by an unrelated process of the server's user.
    user = SYSTEM_USER if os.geteuid() == 0 else None
    squatter = subprocess.Popen(["sleep", "60"], user=user)
    try:
        lines = lock.splitlines()
        (data_dir / "postmaster.pid").write_text("\n".join([str(squatter.pid), *lines[1:]]) + "\n")
        server.start()
        server.stop()
    finally:
        squatter.kill()
        squatter.wait()


def test_no_processes_left_after_stop(pg_folder: Path) -> None:
    broker = EmbeddedBroker(free_port(), pg_folder)
    server = EmbeddedPostgres(pg_folder / "data", free_port())
    broker.start()
    server.start()
    assert broker.pid is not None
    pids = [broker.pid, *_postgres_pids(server)]
    assert len(pids) > 2  # postmaster children were seen

    broker.stop()
    server.stop()

    assert broker.pid is None
    assert server.pid is None
    assert _wait_gone(pids, timeout=0.5) == []


_ORPHAN_SCRIPT = """
import json, sys, time
from pathlib import Path
import psutil
from infra.broker import EmbeddedBroker
from infra.ports import free_port
from infra.postgres import EmbeddedPostgres

folder = Path(sys.argv[1])
broker = EmbeddedBroker(free_port(), folder)
server = EmbeddedPostgres(folder / "data", free_port())
broker.start()
server.start()
children = [p.pid for p in psutil.Process(server.pid).children(recursive=True)]
print(json.dumps([broker.pid, server.pid, *children]), flush=True)
time.sleep(120)
"""


def test_children_die_with_a_killed_parent(pg_folder: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c", textwrap.dedent(_ORPHAN_SCRIPT), str(pg_folder)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert parent.stdout is not None
        pids = json.loads(parent.stdout.readline())
        assert len(pids) > 2
        assert _alive(pids[0])  # broker
        assert _alive(pids[1])  # postmaster (its children may include short-lived backends)
    finally:
        parent.kill()
        parent.wait()

    assert _wait_gone(pids) == []
