"""A pipeline for the complaint and follow-up tests: recorder, relay and projector as real
processes on the real broker and a database of their own, the SDK to send with, the API to read
with, and helpers to wait for what the pipeline does."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, TopicPartition

from api.app import create_app
from events import topics
from events.producer import TouchpointProducer
from infra.broker import EmbeddedBroker
from infra.postgres import EmbeddedPostgres
from infra.settings import Settings
from tests.conftest import new_database
from tests.integration.helpers import (
    ROOT,
    Service,
    end_offsets,
    pipeline_env,
    projected_at_least,
    query,
    wait_until,
)

MODULES = ("services.recorder", "services.relay", "services.projector")
ALERT_NAMESPACE = uuid.UUID("11ef527a-f56f-4707-a1f1-b8efd878d3d7")
"""The alert contract's namespace, fixed forever: alert ids are checked against it here."""


def alert_id(kind: str, customer_id: str, episode: str) -> str:
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{kind}|{customer_id}|{episode}"))


def z(moment: datetime) -> str:
    """A time as the views write it: RFC 3339 UTC with "Z"."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Stack:
    dsn: str
    bootstrap: str
    services: dict[str, Service]
    sdk: TouchpointProducer
    api: TestClient
    alerts_start: dict[TopicPartition, int]

    def log(self) -> str:
        return "\n".join(f"--- {n}\n{s.log()[-4000:]}" for n, s in self.services.items())

    def send(self, method: str, customer_id: str, **fields: Any) -> str:
        """One event through the SDK (sent at once; `flush` waits for the broker)."""
        return str(getattr(self.sdk, method)(customer_id, **fields))

    def flush(self) -> None:
        assert self.sdk.flush(timeout=60) == 0

    def wait_projected(self, versions: dict[str, int], timeout: float = 60) -> None:
        """Until the 360 of each customer is at (at least) the given version."""

        self.flush()
        wait_until(lambda: projected_at_least(self.dsn, versions), timeout=timeout,
                   what=f"{len(versions)} customers", log=self.log)  # fmt: skip

    def alerts(self, kind: str, prefix: str) -> list[tuple[str, dict[str, Any], str]]:
        """(alert_id, document, status) of the alerts of `kind` whose customer has the prefix
        (or, for a product spike, whose product has it), in log order."""
        rows = query(
            self.dsn,
            "SELECT alert_id, alert, status FROM crm_alerts WHERE kind = %s "
            "AND (customer_id LIKE %s OR alert->'details'->>'product_sku' LIKE %s) ORDER BY seq",
            (kind, prefix + "%", prefix + "%"),
        )
        return [(str(a), d, str(s)) for a, d, s in rows]  # type: ignore[misc]

    def wait_alert(self, ident: str, timeout: float = 60) -> None:
        def logged() -> bool:
            return bool(query(self.dsn, "SELECT 1 FROM crm_alerts WHERE alert_id = %s", (ident,)))

        wait_until(logged, timeout=timeout, what=f"alert {ident}", log=self.log)

    def published(self, alert_ids: set[str], timeout: float = 30) -> dict[str, dict[str, Any]]:
        """The documents of these alerts as the relay published them on crm.alerts."""
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        consumer.assign(list(self.alerts_start))
        for partition, offset in self.alerts_start.items():
            consumer.seek(partition, offset)
        found: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout
        try:
            while not alert_ids <= found.keys():
                assert time.monotonic() < deadline, f"not on crm.alerts: {alert_ids - found.keys()}"
                for records in consumer.poll(timeout_ms=200).values():
                    for record in records:
                        doc = orjson.loads(record.value)
                        if doc["alert_id"] in alert_ids:
                            assert record.key == doc["customer_id"].encode()
                            found[doc["alert_id"]] = doc
        finally:
            consumer.close()
        return found

    def replay(self, *names: str) -> None:
        """`crm replay NAME...` with the pipeline's settings, the projector stopped meanwhile."""
        projector = self.services["services.projector"]
        projector.stop()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "infra.cli", "replay", *names],
                cwd=ROOT, env=projector.env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
        finally:
            projector.start()


@contextmanager
def pipeline(
    broker: EmbeddedBroker, postgres: EmbeddedPostgres, logs: Path, spool: Path, **settings: str
) -> Iterator[Stack]:
    """A pipeline with the `CRM_*` settings given, for one test module."""
    with new_database(postgres) as dsn:
        env = pipeline_env(broker.bootstrap, dsn, **settings)
        alerts_start = end_offsets(broker.bootstrap, topics.ALERTS)
        services = {m: Service(m, env, logs / f"{m}.log").start() for m in MODULES}
        api_settings = Settings(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, DATABASE_URL=dsn)
        try:
            with (
                TouchpointProducer(broker.bootstrap, source="support", spool_dir=spool) as sdk,
                TestClient(create_app(api_settings)) as api,
            ):
                stack = Stack(dsn, broker.bootstrap, services, sdk, api, alerts_start)
                wait_until(
                    lambda: "event=desertion_scanned" in services["services.projector"].log(),
                    timeout=60, what="the projector's clock running", log=stack.log,
                )  # fmt: skip
                yield stack
        finally:
            for service in services.values():
                service.stop()


def rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    """Every row of a query, sorted (for comparing tables)."""
    return sorted(query(dsn, sql), key=repr)
