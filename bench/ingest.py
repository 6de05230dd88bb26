"""Ingest benchmark: SDK vs raw kafka-python send rate, and recorder throughput.

Starts its own embedded broker and PostgreSQL on free ports and sends N events three ways, with
the same producer settings (acks=all, idempotence): raw kafka-python with pre-encoded bytes (the
ceiling), raw kafka-python building each envelope from the same input as the SDK (uuid4,
timestamp, orjson; no validation), and `TouchpointProducer` (validating each). Then it starts
the recorder on the 3N-event backlog and times until every event is in the event store.

    .venv/bin/python bench/ingest.py [--events 100000] [--customers 10000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
from kafka import KafkaProducer

from events import topics
from events.codec import encode
from events.envelope import validate_envelope
from events.producer import TouchpointProducer
from infra.broker import EmbeddedBroker
from infra.eventstore import EventStore
from infra.ports import free_port
from infra.postgres import EmbeddedPostgres
from infra.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
PRODUCER_CONFIG = {"acks": "all", "enable_idempotence": True, "linger_ms": 5}


def payload(i: int) -> dict[str, object]:
    return {
        "order_id": f"o-{i}",
        "items": [{"sku": f"sku-{i % 50}", "quantity": 1 + i % 3, "unit_price": "19.90"}],
        "total": "59.70",
        "currency": "EUR",
    }


def raw_messages(n: int, customers: int) -> list[tuple[bytes, bytes]]:
    now = datetime.now(UTC).isoformat()
    out = []
    for i in range(n):
        customer = f"raw-{i % customers}"
        envelope = validate_envelope({
            "event_id": str(uuid.uuid4()), "type": "purchase.made", "schema_version": 1,
            "customer_id": customer, "occurred_at": now, "source": "bench", "payload": payload(i),
        })  # fmt: skip
        out.append((customer.encode(), encode(envelope)))
    return out


def send_raw(bootstrap: str, messages: list[tuple[bytes, bytes]]) -> float:
    producer = KafkaProducer(bootstrap_servers=bootstrap, **PRODUCER_CONFIG)
    started = time.perf_counter()
    for key, value in messages:
        producer.send(topics.TOUCHPOINTS, key=key, value=value)
    producer.flush()
    elapsed = time.perf_counter() - started
    producer.close()
    return len(messages) / elapsed


def send_raw_building(bootstrap: str, n: int, customers: int) -> float:
    """Raw kafka-python from the same input as the SDK (customer id + payload): the sender
    builds each envelope (uuid4, timestamp) and encodes it with orjson, but validates nothing."""
    payloads = [payload(i) for i in range(n)]
    producer = KafkaProducer(bootstrap_servers=bootstrap, **PRODUCER_CONFIG)
    started = time.perf_counter()
    for i, body in enumerate(payloads):
        customer = f"built-{i % customers}"
        value = orjson.dumps({
            "event_id": str(uuid.uuid4()), "type": "purchase.made", "schema_version": 1,
            "customer_id": customer, "occurred_at": datetime.now(UTC), "source": "bench",
            "payload": body,
        })  # fmt: skip
        producer.send(topics.TOUCHPOINTS, key=customer.encode(), value=value)
    producer.flush()
    elapsed = time.perf_counter() - started
    producer.close()
    return n / elapsed


def send_sdk(bootstrap: str, n: int, customers: int, spool_dir: Path) -> float:
    payloads = [payload(i) for i in range(n)]
    with TouchpointProducer(bootstrap, source="bench", spool_dir=spool_dir) as producer:
        started = time.perf_counter()
        for i, body in enumerate(payloads):
            producer.send("purchase.made", f"sdk-{i % customers}", body)
        pending = producer.flush(timeout=300)
        elapsed = time.perf_counter() - started
    if pending:
        raise SystemExit(f"SDK still had {pending} events pending")
    return n / elapsed


def record_backlog(bootstrap: str, dsn: str, total: int) -> float:
    store = EventStore(dsn)
    store.create_tables()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "DATABASE_URL": dsn,
           "CRM_SESSION_TIMEOUT_MS": "3000", "CRM_LOG_LEVEL": "WARNING"}  # fmt: skip
    recorder = subprocess.Popen([sys.executable, "-m", "services.recorder"], cwd=ROOT, env=env)
    try:
        started = None
        while True:
            count = store.count()
            if count and started is None:
                started = time.perf_counter()  # from the first recorded batch (after the join)
            if count >= total:
                break
            time.sleep(0.05)
        assert started is not None
        return total / (time.perf_counter() - started)
    finally:
        recorder.terminate()
        recorder.wait()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=1, help="repeat and report medians")
    args = parser.parse_args()

    rows: dict[str, list[float]] = {
        "raw, pre-encoded bytes": [],
        "raw, building the JSON": [],
        "SDK send": [],
        "recorder": [],
    }
    for _ in range(args.runs):
        workdir = Path(tempfile.mkdtemp(prefix="crm-bench-"))
        try:
            with (
                EmbeddedBroker(free_port(), workdir) as broker,
                EmbeddedPostgres(workdir / "pg", free_port()) as postgres,
            ):
                ensure_topics(broker.bootstrap, 6)
                messages = raw_messages(args.events, args.customers)
                rows["raw, pre-encoded bytes"].append(send_raw(broker.bootstrap, messages))
                rows["raw, building the JSON"].append(
                    send_raw_building(broker.bootstrap, args.events, args.customers)
                )
                rows["SDK send"].append(
                    send_sdk(broker.bootstrap, args.events, args.customers, workdir / "spool")
                )
                rows["recorder"].append(
                    record_backlog(broker.bootstrap, postgres.url, 3 * args.events)
                )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{args.events:,} events per path, {args.customers:,} customers, {args.runs} run(s)")
    print(f"{'path':<24}{'median events/s':>18}{'all runs':>40}")
    for name, rates in rows.items():
        runs = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"{name:<24}{statistics.median(rates):>18,.0f}{runs:>40}")
    sdk = statistics.median(rows["SDK send"])
    for name in ("raw, pre-encoded bytes", "raw, building the JSON"):
        print(f"SDK / {name}: {sdk / statistics.median(rows[name]):.0%} (target >= 90%)")
    print("recorder target >= 10,000 events/s")


if __name__ == "__main__":
    main()
