"""Fixtures of the complaint and merge intake tests (tests/integration/intake.py): a database
of their own, one recorder process on it (its case and merge tables created), a producer, an
event store on a fresh database for in-process batches, and the API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from kafka import KafkaProducer

from api.app import create_app
from infra.broker import EmbeddedBroker
from infra.eventstore import EventStore
from infra.postgres import EmbeddedPostgres
from infra.settings import Settings
from tests.conftest import new_database
from tests.integration.helpers import Service, pipeline_env, query, running, wait_until
from tests.integration.intake import MERGE_WAIT


@pytest.fixture(scope="module")
def database(postgres: EmbeddedPostgres) -> Iterator[str]:
    with new_database(postgres) as url:
        yield url


@pytest.fixture(scope="module")
def recorder(
    broker: EmbeddedBroker, database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """One recorder process for the module, its case and merge tables created; a merge waits
    3 s for its target."""
    log_file = tmp_path_factory.mktemp("recorder") / "recorder.log"
    env = pipeline_env(broker.bootstrap, database, CRM_MERGE_WAIT_SECONDS=str(MERGE_WAIT))
    with running("services.recorder", env, log_file) as rec:
        exists = ("SELECT count(*) = 2 FROM pg_tables "
                  "WHERE tablename IN ('crm_complaint_cases', 'crm_customer_merges')")  # fmt: skip
        wait_until(lambda: bool(query(database, exists)[0][0]), timeout=30,
                   what="the case and merge tables", log=rec.log)  # fmt: skip
        yield rec


@pytest.fixture(scope="module")
def producer(broker: EmbeddedBroker) -> Iterator[KafkaProducer]:
    kafka_producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=5)
    yield kafka_producer
    kafka_producer.close()


@pytest.fixture
def store(fresh_database: str) -> Iterator[EventStore]:
    event_store = EventStore(fresh_database)
    event_store.create_tables()
    yield event_store
    event_store.close()


@pytest.fixture(scope="module")
def client(broker: EmbeddedBroker, database: str, recorder: Service) -> Iterator[TestClient]:
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, DATABASE_URL=database)
    with TestClient(create_app(settings)) as test_client:
        yield test_client
