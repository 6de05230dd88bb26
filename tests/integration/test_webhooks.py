"""Webhooks end to end: subscriptions through the API, alerts logged in PostgreSQL the way the
projector logs them, the dispatcher run as its own process (`python -m services.webhooks`), and
real HTTP receivers in this process that check every signature."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql

from api.app import create_app
from events.webhooks import InvalidSignature, verify_request
from infra.ports import free_port
from infra.settings import Settings
from projections.alerts import COMPLAINT_SLA_BREACHED, CREDIT_LIMIT_EXCEEDED, INVOICE_OVERDUE, Alert
from services.alert_log import log_alerts
from tests.integration.helpers import Service, running, wait_until

pytestmark = pytest.mark.integration

SECRET = "whsec-test-0123456789abcdef"
RAISED_AT = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)
FAST = {
    "CRM_WEBHOOK_BACKOFF_SECONDS": "0.1",
    "CRM_WEBHOOK_MAX_BACKOFF_SECONDS": "0.3",
    "CRM_WEBHOOK_TIMEOUT_SECONDS": "2",
    "CRM_WEBHOOK_RETRY_SECONDS": "60",
    "CRM_WEBHOOK_CONCURRENCY_PER_SUBSCRIPTION": "2",
}
WAIT_S = 30


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    verified: bool
    answered: int

    @property
    def delivery_id(self) -> str:
        return self.headers["x-crm-delivery-id"]

    @property
    def alert_id(self) -> str:
        return str(orjson.loads(self.body)["alert_id"])


@dataclass
class Receiver:
    """An HTTP endpoint answering `statuses` in turn, then `status`; with `hang` set, it holds
    every request until `release` is set."""

    status: int = 200
    statuses: list[int] = field(default_factory=list)
    hang: bool = False
    received: list[Received] = field(default_factory=list)
    arrivals: int = 0
    """Requests that came in, answered or not yet."""
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def answer(self, headers: dict[str, str], body: bytes, verified: bool) -> int:
        with self.lock:
            code = self.statuses.pop(0) if self.statuses else self.status
            self.received.append(Received(headers, body, verified, code))
            return code

    def delivered_alert_ids(self) -> list[str]:
        with self.lock:
            return [r.alert_id for r in self.received if 200 <= r.answered < 300]


@contextmanager
def serving(receiver: Receiver) -> Iterator[Receiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                verify_request(SECRET, self.headers, body)
                verified = True
            except InvalidSignature:
                verified = False
            with receiver.lock:
                receiver.arrivals += 1
            if receiver.hang:
                receiver.release.wait(WAIT_S)
            headers = {name.lower(): value for name, value in self.headers.items()}
            self.send_response(receiver.answer(headers, body, verified))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class World:
    client: TestClient
    database_url: str
    log_dir: Path

    def dispatcher(self, **settings: str) -> AbstractContextManager[Service]:
        """`python -m services.webhooks` on this database, FAST settings overridden by these."""
        env = {"DATABASE_URL": self.database_url, **FAST, **settings}
        log_file = self.log_dir / f"webhooks-{uuid.uuid4().hex[:8]}.log"
        return running("services.webhooks", env, log_file)

    def subscribe(self, url: str, kinds: list[str] | None = None) -> str:
        body: dict[str, Any] = {"url": url, "secret": SECRET}
        if kinds is not None:
            body["kinds"] = kinds
        response = self.client.post("/subscriptions", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def deliveries(self, subscription_id: str, **params: Any) -> list[dict[str, Any]]:
        response = self.client.get(f"/subscriptions/{subscription_id}/deliveries", params=params)
        assert response.status_code == 200, response.text
        return list(response.json()["deliveries"])

    def statuses(self, subscription_id: str) -> list[str]:
        return [d["status"] for d in self.deliveries(subscription_id)]

    def log(self, *alerts: Alert) -> None:
        """Log alerts as the projector does: in a transaction, through log_alerts."""

        async def log() -> None:
            conn = await psycopg.AsyncConnection.connect(self.database_url)
            async with conn, conn.transaction():
                await log_alerts(conn, list(alerts))

        asyncio.run(log())


@pytest.fixture
def world(fresh_database: str, tmp_path: Path) -> Iterator[World]:
    """The API on an empty database: the first subscription or the dispatcher, whichever comes
    first, creates the tables (tests subscribe before they log alerts)."""
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", DATABASE_URL=fresh_database)
    with TestClient(create_app(settings)) as client:
        yield World(client, fresh_database, tmp_path)


def alert(number: int, kind: str = CREDIT_LIMIT_EXCEEDED) -> Alert:
    details = {"outstanding": f"{5000 + number}.00", "limit": "5000", "currency": "EUR"}
    return Alert.for_episode(
        kind, f"C-W{number}", f"episode-{uuid.uuid4()}", RAISED_AT, details, "Call the customer."
    )


def wait_for(what: str, predicate: Callable[[], bool], service: Service) -> None:
    wait_until(predicate, timeout=WAIT_S, what=what, log=service.log)


def test_every_alert_arrives_signed_with_the_contract_body_and_headers(world: World) -> None:
    alerts = [alert(n) for n in range(3)]
    with serving(Receiver()) as receiver, world.dispatcher() as dispatcher:
        subscription = world.subscribe(receiver.url)
        world.log(*alerts)
        wait_for("3 deliveries", lambda: len(receiver.received) == 3, dispatcher)

    deliveries = world.deliveries(subscription)
    assert all(r.verified for r in receiver.received)
    by_id = {a.alert_id: a.to_json() for a in alerts}
    bodies = [orjson.loads(r.body) for r in receiver.received]
    assert sorted(bodies, key=str) == sorted(by_id.values(), key=str)
    # the contract's key order (JSONB keeps no order: within `details` it is PostgreSQL's)
    assert all(list(body) == list(by_id[body["alert_id"]]) for body in bodies)
    for request in receiver.received:
        assert request.headers["x-crm-alert-id"] == request.alert_id
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"].startswith("crm-webhooks/")
        with pytest.raises(InvalidSignature, match="does not match"):
            verify_request("whsec-another-secret-000", request.headers, request.body)
    assert {d["id"] for d in deliveries} == {r.delivery_id for r in receiver.received}
    assert [d["status"] for d in deliveries] == ["delivered"] * 3
    assert [[a["status_code"] for a in d["attempts"]] for d in deliveries] == [[200]] * 3


def test_a_503_is_retried_and_both_attempts_are_listed(world: World) -> None:
    with serving(Receiver(statuses=[503])) as receiver, world.dispatcher() as d:
        subscription = world.subscribe(receiver.url)
        world.log(alert(1))
        wait_for("delivered", lambda: world.statuses(subscription) == ["delivered"], d)

    (delivery,) = world.deliveries(subscription)
    assert [(a["attempt"], a["status_code"]) for a in delivery["attempts"]] == [(1, 503), (2, 200)]
    assert delivery["attempts"][0]["error"] is None
    assert delivery["last_error"] is None
    assert delivery["next_attempt_at"] is None
    assert delivery["finished_at"] is not None
    assert [r.answered for r in receiver.received] == [503, 200]
    assert {r.delivery_id for r in receiver.received} == {delivery["id"]}
    assert all(r.verified for r in receiver.received)


def test_a_400_fails_at_once_after_one_attempt(world: World) -> None:
    with serving(Receiver(status=400)) as receiver, world.dispatcher() as d:
        subscription = world.subscribe(receiver.url)
        world.log(alert(1))
        wait_for("failed", lambda: world.statuses(subscription) == ["failed"], d)

    (delivery,) = world.deliveries(subscription)
    assert [a["status_code"] for a in delivery["attempts"]] == [400]
    assert delivery["last_error"] == "HTTP 400 (not retried)"
    assert len(receiver.received) == 1


def test_a_delivery_that_exhausts_its_retries_is_kept_as_failed(world: World) -> None:
    dispatcher = world.dispatcher(CRM_WEBHOOK_RETRY_SECONDS="1.5")
    with serving(Receiver(status=503)) as receiver, dispatcher as d:
        subscription = world.subscribe(receiver.url)
        world.log(alert(1))
        wait_for("failed", lambda: world.statuses(subscription) == ["failed"], d)

    (delivery,) = world.deliveries(subscription, status="failed")
    codes = [a["status_code"] for a in delivery["attempts"]]
    assert len(codes) >= 2
    assert set(codes) == {503}
    assert len(receiver.received) == len(codes)
    assert delivery["last_error"] == f"HTTP 503 (gave up after {len(codes)} attempts in 1.5 s)"
    assert world.deliveries(subscription, status="pending") == []


def test_a_dead_endpoint_does_not_hold_back_a_healthy_one(world: World) -> None:
    refused = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    alerts = [alert(n) for n in range(10)]
    dispatcher = world.dispatcher(CRM_WEBHOOK_TIMEOUT_SECONDS="30")
    with (
        serving(Receiver()) as healthy,
        serving(Receiver(hang=True)) as hanging,
        dispatcher as d,
    ):
        dead = world.subscribe(refused)
        stuck = world.subscribe(hanging.url)
        ok = world.subscribe(healthy.url)
        world.log(*alerts)
        wait_for("the healthy endpoint", lambda: len(healthy.delivered_alert_ids()) == 10, d)

        assert sorted(healthy.delivered_alert_ids()) == sorted(a.alert_id for a in alerts)
        assert world.statuses(ok) == ["delivered"] * 10
        assert world.statuses(stuck) == ["pending"] * 10
        assert world.statuses(dead) == ["pending"] * 10
        assert len(hanging.received) == 0
        assert hanging.arrivals <= 2  # its concurrency: both of its slots are held, unanswered
        wait_for("refused attempts", lambda: _attempted(world, dead) >= 10, d)  # each tried
        assert all(x["last_error"].startswith("ConnectError") for x in world.deliveries(dead))

        hanging.hang = False
        hanging.release.set()
        wait_for("the stuck endpoint", lambda: world.statuses(stuck) == ["delivered"] * 10, d)
        assert world.statuses(dead) == ["pending"] * 10

    assert len(healthy.received) == 10
    assert sorted(hanging.delivered_alert_ids()) == sorted(a.alert_id for a in alerts)


def _attempted(world: World, subscription: str) -> int:
    return sum(len(d["attempts"]) for d in world.deliveries(subscription))


def test_only_alerts_of_the_subscribed_kinds_are_delivered(world: World) -> None:
    credit = [alert(1), alert(2)]
    overdue = [alert(3, INVOICE_OVERDUE), alert(4, INVOICE_OVERDUE)]
    with (
        serving(Receiver()) as some,
        serving(Receiver()) as every,
        world.dispatcher() as d,
    ):
        filtered = world.subscribe(some.url, kinds=[CREDIT_LIMIT_EXCEEDED])
        world.subscribe(every.url, kinds=[])
        world.log(credit[0], overdue[0], credit[1], overdue[1])
        wait_for("every kind", lambda: len(every.delivered_alert_ids()) == 4, d)
        wait_for("credit alerts", lambda: len(some.delivered_alert_ids()) == 2, d)

    assert sorted(some.delivered_alert_ids()) == sorted(a.alert_id for a in credit)
    assert sorted(every.delivered_alert_ids()) == sorted(a.alert_id for a in credit + overdue)
    assert {d["kind"] for d in world.deliveries(filtered)} == {CREDIT_LIMIT_EXCEEDED}
    assert len(world.deliveries(filtered)) == 2


def test_deleting_a_subscription_cancels_its_deliveries_and_keeps_their_history(
    world: World,
) -> None:
    with (
        serving(Receiver(status=503)) as failing,
        serving(Receiver()) as control,
        world.dispatcher() as d,
    ):
        deleted = world.subscribe(failing.url)
        kept = world.subscribe(control.url)
        world.log(alert(1))
        wait_for("a failed attempt", lambda: _attempted(world, deleted) >= 1, d)

        assert world.client.delete(f"/subscriptions/{deleted}").status_code == 204
        seen = len(failing.received)
        later = alert(2)
        world.log(later)
        wait_for("the later alert", lambda: later.alert_id in control.delivered_alert_ids(), d)
        wait_for("the control's deliveries", lambda: world.statuses(kept) == ["delivered"] * 2, d)

        (cancelled,) = world.deliveries(deleted)
        assert cancelled["status"] == "cancelled"
        assert cancelled["attempts"]
        assert {a["status_code"] for a in cancelled["attempts"]} == {503}
        assert len(failing.received) <= seen + 1  # at most the attempt in flight at the delete
        assert later.alert_id not in {r.alert_id for r in failing.received}

    assert world.client.get(f"/subscriptions/{deleted}").status_code == 404
    assert world.client.delete(f"/subscriptions/{deleted}").status_code == 404
    assert [s["id"] for s in world.client.get("/subscriptions").json()] == [kept]


def test_a_restarted_dispatcher_resumes_pending_deliveries_and_sends_nothing_twice(
    world: World,
) -> None:
    first, second, third = alert(1), alert(2), alert(3)
    with serving(Receiver()) as receiver:
        subscription = world.subscribe(receiver.url)
        with world.dispatcher() as d:
            world.log(first)
            wait_for("the first alert", lambda: world.statuses(subscription) == ["delivered"], d)
            receiver.status = 503
            world.log(second)
            wait_for("a failed attempt", lambda: len(receiver.received) >= 2, d)
            assert d.stop() == 0
        receiver.status = 200
        world.log(third)  # while no dispatcher runs
        with world.dispatcher() as d:
            wait_for("all", lambda: world.statuses(subscription) == ["delivered"] * 3, d)

    assert sorted(receiver.delivered_alert_ids()) == sorted(
        a.alert_id for a in (first, second, third)
    )
    retried = next(x for x in world.deliveries(subscription) if x["alert_id"] == second.alert_id)
    codes = [a["status_code"] for a in retried["attempts"]]
    assert codes[-1] == 200
    assert set(codes[:-1]) == {503}
    assert [a["attempt"] for a in retried["attempts"]] == list(range(1, len(codes) + 1))


def test_subscriptions_are_validated_listed_and_read_without_their_secret(
    fresh_database: str,
) -> None:
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        name = sql.Identifier(str(conn.execute("SELECT current_database()").fetchone()[0]))
        conn.execute(sql.SQL("ALTER DATABASE {} SET timezone = 'America/New_York'").format(name))
    settings = Settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", DATABASE_URL=fresh_database)
    with TestClient(create_app(settings)) as client:
        assert client.get("/subscriptions").json() == []  # no table yet: none
        invalid = [
            ({"url": "ftp://example.com/x", "secret": SECRET}, "URL scheme should be 'http' or"),
            ({"url": "https://example.com/x", "secret": "short"}, "at least 16 characters"),
            ({"url": "https://example.com/x"}, "Field required"),
            ({"url": "https://example.com/x", "secret": SECRET, "kinds": ["nope"]},
             f"unknown alert kind 'nope'; known kinds: {COMPLAINT_SLA_BREACHED}"),
        ]  # fmt: skip
        for body, message in invalid:
            response = client.post("/subscriptions", json=body)
            assert response.status_code == 422, body
            assert message in response.json()["detail"][0]["msg"], response.json()

        response = client.post(
            "/subscriptions",
            json={"url": "https://example.com/hook", "secret": SECRET,
                  "kinds": [INVOICE_OVERDUE, CREDIT_LIMIT_EXCEEDED, INVOICE_OVERDUE]},
        )  # fmt: skip
        assert response.status_code == 201
        created = response.json()
        assert set(created) == {"id", "url", "kinds", "created_at"}
        assert created["kinds"] == [CREDIT_LIMIT_EXCEEDED, INVOICE_OVERDUE]
        assert created["created_at"].endswith("Z")  # UTC, though the session's zone is not
        assert client.get("/subscriptions").json() == [created]
        assert client.get(f"/subscriptions/{created['id']}").json() == created
        assert client.get(f"/subscriptions/{created['id']}/deliveries").json() == {
            "subscription_id": created["id"],
            "deliveries": [],
        }
        unknown = uuid.uuid4()
        assert client.get(f"/subscriptions/{unknown}").json() == {
            "detail": f"subscription {unknown} is unknown or was deleted"
        }
        assert client.get(f"/subscriptions/{unknown}/deliveries").status_code == 404
        assert client.delete(f"/subscriptions/{unknown}").status_code == 404
        assert client.get("/subscriptions/not-a-uuid").status_code == 422
        path = f"/subscriptions/{created['id']}/deliveries"
        assert client.get(path, params={"status": "lost"}).status_code == 422
