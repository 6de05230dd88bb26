"""GET /alerts, POST /alerts/{id}/ack and GET /alerts/stream against the real PostgreSQL, with
the API run as `python -m api` (uvicorn) and alerts logged the way the platform logs them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from api.alert_feed import APPLICATION_NAME, AlertFeed
from infra.broker import EmbeddedBroker
from infra.ports import free_port
from infra.postgres import EmbeddedPostgres
from infra.processes import port_open
from projections.alerts import CREDIT_LIMIT_EXCEEDED, CUSTOMER_DESERTING, INVOICE_OVERDUE, Alert
from services import alert_log
from tests.conftest import new_database
from tests.integration.helpers import Service, running, wait_until

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
STREAM_DEADLINE_S = 30.0


@dataclass(frozen=True)
class Api:
    url: str
    dsn: str
    service: Service


async def log_alerts_async(dsn: str, alerts: list[Alert]) -> None:
    """Log alerts in one transaction, as the platform's detectors do."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await alert_log.log_alerts(conn, alerts)


def log_alerts(dsn: str, alerts: list[Alert]) -> None:
    asyncio.run(log_alerts_async(dsn, alerts))


def resolve(dsn: str, alerts: list[Alert]) -> None:
    """Resolve alerts at T0, as the platform does when their episodes end."""

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await alert_log.resolve_alerts(conn, [a.alert_id for a in alerts], T0)

    asyncio.run(run())


def alert(kind: str, customer_id: str, minute: int = 0) -> Alert:
    return Alert.for_episode(
        kind,
        customer_id,
        f"episode-{uuid.uuid4()}",
        T0 + timedelta(minutes=minute),
        {"note": f"{kind} of {customer_id}", "amount": "12.50"},
        f"Call {customer_id}.",
    )


def feed_backends(dsn: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
            "AND datname = current_database()",
            (APPLICATION_NAME,),
        ).fetchall()
    return [pid for (pid,) in rows]


@contextmanager
def api_on(dsn: str, bootstrap: str, log_file: Path) -> Iterator[Api]:
    """`python -m api` on `dsn`, once it accepts connections and its alert feed listens."""
    port = free_port()
    env = {
        "DATABASE_URL": dsn,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "CRM_API_HOST": HOST,
        "CRM_API_PORT": str(port),
    }
    with running("api", env, log_file) as service:
        wait_until(lambda: port_open(HOST, port), timeout=60, what="the API", log=service.log)
        wait_until(lambda: len(feed_backends(dsn)) == 1, timeout=30, what="the alert feed")
        yield Api(f"http://{HOST}:{port}", dsn, service)


@pytest.fixture(scope="module")
def live(
    postgres: EmbeddedPostgres, broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    """An API on a database of its own, for tests that log alerts of their own customers."""
    with new_database(postgres) as dsn:
        log_file = tmp_path_factory.mktemp("api-live") / "api.log"
        with api_on(dsn, broker.bootstrap, log_file) as api:
            yield api


# --- the alert log as a list --------------------------------------------------------------


@dataclass(frozen=True)
class Logged:
    alert: Alert
    status: str


@dataclass(frozen=True)
class Listing:
    api: Api
    logged: list[Logged]
    """Oldest first, as logged."""

    def expected(self, predicate: Any = lambda _: True) -> list[str]:
        """alert_id of the logged alerts matching `predicate`, newest first."""
        return [x.alert.alert_id for x in reversed(self.logged) if predicate(x)]


KINDS_CYCLE = [CREDIT_LIMIT_EXCEEDED, INVOICE_OVERDUE, CUSTOMER_DESERTING]
CUSTOMERS = ["C-L1", "C-L2", "C-L3", "C-L4"]
STATUS_CYCLE = ["open", "open", "acknowledged", "resolved"]


@pytest.fixture(scope="module")
def listing(
    postgres: EmbeddedPostgres, broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Listing]:
    """An API on a database holding 12 alerts (3 kinds, 4 customers, every status), logged in
    four transactions; nothing else is written there."""
    with new_database(postgres) as dsn:
        log_file = tmp_path_factory.mktemp("api-listing") / "api.log"
        with api_on(dsn, broker.bootstrap, log_file) as api:
            logged = [
                Logged(alert(KINDS_CYCLE[i % 3], CUSTOMERS[i % 4], i), STATUS_CYCLE[(i // 2) % 4])
                for i in range(12)
            ]
            for start in range(0, 12, 3):
                log_alerts(dsn, [x.alert for x in logged[start : start + 3]])
            set_statuses(dsn, logged)
            yield Listing(api, logged)


def set_statuses(dsn: str, logged: list[Logged]) -> None:
    resolve(dsn, [x.alert for x in logged if x.status == "resolved"])
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "UPDATE crm_alerts SET status = 'acknowledged', status_at = %s, "
            "acknowledged_by = 'ops' WHERE alert_id = ANY(%s)",
            (T0, [x.alert.alert_id for x in logged if x.status == "acknowledged"]),
        )


def get_alerts(api: Api, **params: Any) -> httpx.Response:
    return httpx.get(f"{api.url}/alerts", params=params, timeout=10)


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["alert_id"] for item in response.json()["alerts"]]


def test_an_api_on_a_fresh_database_lists_no_alerts(
    fresh_database: str, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    with api_on(fresh_database, broker.bootstrap, tmp_path / "api.log") as api:
        response = get_alerts(api)

    assert response.status_code == 200
    assert response.json() == {"alerts": [], "next_before": None}


def test_alerts_are_listed_newest_first_with_their_place_and_status(listing: Listing) -> None:
    response = get_alerts(listing.api)

    assert ids(response) == listing.expected()
    items = response.json()["alerts"]
    seqs = [item["seq"] for item in items]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs)
    by_id = {x.alert.alert_id: x for x in listing.logged}
    for item in items:
        x = by_id[item["alert_id"]]
        assert list(item) == [
            "alert_id", "kind", "customer_id", "raised_at", "details", "suggested_action",
            "seq", "status", "status_at", "acknowledged_by",
        ]  # fmt: skip
        assert {k: item[k] for k in list(item)[:6]} == x.alert.to_json()
        assert item["status"] == x.status
        assert item["status_at"] == (None if x.status == "open" else "2026-03-01T09:00:00Z")
        assert item["acknowledged_by"] == ("ops" if x.status == "acknowledged" else None)
    assert response.json()["next_before"] is None


@pytest.mark.parametrize("kinds", [[INVOICE_OVERDUE], [CREDIT_LIMIT_EXCEEDED, CUSTOMER_DESERTING]])
def test_alerts_are_filtered_by_kind(listing: Listing, kinds: list[str]) -> None:
    assert ids(get_alerts(listing.api, kind=kinds)) == listing.expected(
        lambda x: x.alert.kind in kinds
    )


def test_alerts_are_filtered_by_customer(listing: Listing) -> None:
    assert ids(get_alerts(listing.api, customer_id="C-L2")) == listing.expected(
        lambda x: x.alert.customer_id == "C-L2"
    )
    assert ids(get_alerts(listing.api, customer_id="C-NONE")) == []


@pytest.mark.parametrize("status", ["open", "acknowledged", "resolved"])
def test_alerts_are_filtered_by_status(listing: Listing, status: str) -> None:
    expected = listing.expected(lambda x: x.status == status)

    assert expected  # the data set has every status
    assert ids(get_alerts(listing.api, status=status)) == expected


def test_filters_combine(listing: Listing) -> None:
    response = get_alerts(listing.api, kind=INVOICE_OVERDUE, customer_id="C-L1", status="open")

    assert ids(response) == listing.expected(
        lambda x: (x.alert.kind, x.alert.customer_id, x.status) == (INVOICE_OVERDUE, "C-L1", "open")
    )


def test_pages_follow_next_before_to_the_end_without_gaps_or_repeats(listing: Listing) -> None:
    pages: list[list[str]] = []
    params: dict[str, Any] = {"limit": 5}
    while True:
        response = get_alerts(listing.api, **params)
        pages.append(ids(response))
        next_before = response.json()["next_before"]
        if next_before is None:
            break
        params["before"] = next_before

    assert [len(page) for page in pages] == [5, 5, 2]
    assert [i for page in pages for i in page] == listing.expected()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "closed"}, "status must be one of open, acknowledged, resolved; got 'closed'"),
        ({"kind": "credit.limit"}, "got 'credit.limit'"),
        ({"customer_id": "C 1"}, "customer_id must be 1-64 characters"),
    ],
)
def test_an_unknown_status_or_kind_or_malformed_customer_is_refused_with_a_message(
    listing: Listing, params: dict[str, str], message: str
) -> None:
    response = get_alerts(listing.api, **params)

    assert response.status_code == 422
    assert message in response.json()["detail"]


@pytest.mark.parametrize("limit", [0, 501, "many"])
def test_a_limit_out_of_range_is_refused(listing: Listing, limit: object) -> None:
    response = get_alerts(listing.api, limit=limit)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "limit"]


# --- acknowledging -------------------------------------------------------------------------


def ack(api: Api, alert_id: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(f"{api.url}/alerts/{alert_id}/ack", json=body, timeout=10)


def test_acknowledging_an_open_alert_records_when_and_by_whom(live: Api) -> None:
    logged = alert(CREDIT_LIMIT_EXCEEDED, f"C-ACK-{uuid.uuid4().hex[:8]}")
    log_alerts(live.dsn, [logged])
    before = datetime.now(UTC)

    response = ack(live, logged.alert_id, {"by": "ana@sales"})

    after = datetime.now(UTC)
    assert response.status_code == 200, response.text
    body = response.json()
    assert {k: body[k] for k in logged.to_json()} == logged.to_json()
    assert (body["status"], body["acknowledged_by"]) == ("acknowledged", "ana@sales")
    status_at = datetime.fromisoformat(body["status_at"])
    assert before - timedelta(seconds=1) <= status_at <= after + timedelta(seconds=1)
    listed = get_alerts(live, customer_id=logged.customer_id, status="acknowledged")
    assert listed.json()["alerts"] == [body]


def test_acknowledging_twice_changes_nothing(live: Api) -> None:
    logged = alert(INVOICE_OVERDUE, f"C-ACK-{uuid.uuid4().hex[:8]}")
    log_alerts(live.dsn, [logged])
    first = ack(live, logged.alert_id)

    second = ack(live, logged.alert_id, {"by": "someone else"})

    assert (first.status_code, second.status_code) == (200, 200)
    assert first.json()["acknowledged_by"] is None  # no body: nobody named
    assert second.json() == first.json()


def test_acknowledging_an_unknown_alert_is_404(live: Api) -> None:
    unknown = str(uuid.uuid4())

    response = ack(live, unknown)

    assert response.status_code == 404
    assert response.json() == {"detail": f"alert {unknown} is unknown"}


def test_acknowledging_a_resolved_alert_is_409_and_leaves_it_resolved(live: Api) -> None:
    logged = alert(CUSTOMER_DESERTING, f"C-ACK-{uuid.uuid4().hex[:8]}")
    log_alerts(live.dsn, [logged])
    resolve(live.dsn, [logged])

    response = ack(live, logged.alert_id, {"by": "ana@sales"})

    assert response.status_code == 409
    assert response.json()["detail"].startswith(f"alert {logged.alert_id} is resolved")
    [item] = get_alerts(live, customer_id=logged.customer_id).json()["alerts"]
    assert (item["status"], item["status_at"], item["acknowledged_by"]) == (
        "resolved",
        "2026-03-01T09:00:00Z",
        None,
    )


# --- the stream ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    id: str | None
    event: str | None
    data: str | None
    retry: str | None


def messages(response: httpx.Response) -> Iterator[Message]:
    """The SSE messages of a response; keep-alive comments come as a Message of Nones."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if line:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
            continue
        yield Message(
            fields.get("id"), fields.get("event"), fields.get("data"), fields.get("retry")
        )
        fields = {}


class Stream:
    def __init__(self, response: httpx.Response) -> None:
        self.messages = messages(response)
        self.first = next(self.messages)

    @property
    def start(self) -> int:
        assert self.first.id is not None and self.first.data is None
        return int(self.first.id)

    def take(self, n: int) -> list[Message]:
        """The next `n` events (messages with data), failing after STREAM_DEADLINE_S."""
        deadline = time.monotonic() + STREAM_DEADLINE_S
        events: list[Message] = []
        while len(events) < n:
            assert time.monotonic() < deadline, f"got {len(events)} of {n} events: {events}"
            message = next(self.messages)
            if message.data is not None:
                events.append(message)
        return events


@contextmanager
def stream(api: Api, headers: dict[str, str] | None = None, **params: Any) -> Iterator[Stream]:
    """An open GET /alerts/stream whose first message (the start point) has arrived."""
    timeout = httpx.Timeout(10, read=STREAM_DEADLINE_S)
    with httpx.Client(timeout=timeout) as client, client.stream(
        "GET", f"{api.url}/alerts/stream", params=params, headers=headers
    ) as response:  # fmt: skip
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Stream(response)


def as_sent(alerts: list[Alert]) -> list[tuple[str, dict[str, Any]]]:
    return [(a.kind, a.to_json()) for a in alerts]


def received(events: list[Message]) -> list[tuple[str | None, dict[str, Any]]]:
    return [(e.event, orjson.loads(e.data or "")) for e in events]


def test_a_stream_sends_the_alerts_logged_after_it_connected(live: Api) -> None:
    earlier = alert(INVOICE_OVERDUE, "C-S0")
    log_alerts(live.dsn, [earlier])
    customer = f"C-S1-{uuid.uuid4().hex[:8]}"
    later = [alert(kind, customer, i) for i, kind in enumerate(KINDS_CYCLE)]

    with stream(live) as alerts:
        assert alerts.first.retry is not None
        log_alerts(live.dsn, later[:2])
        log_alerts(live.dsn, later[2:])
        events = alerts.take(3)

    assert received(events) == as_sent(later)
    seqs = [int(e.id or "") for e in events]
    assert alerts.start < seqs[0] < seqs[1] < seqs[2]
    assert (
        seqs
        == [item["seq"] for item in get_alerts(live, customer_id=customer).json()["alerts"]][::-1]
    )


def test_a_reconnecting_client_gets_exactly_the_alerts_it_missed(live: Api) -> None:
    customer = f"C-S2-{uuid.uuid4().hex[:8]}"
    seen = [alert(CREDIT_LIMIT_EXCEEDED, customer, 0), alert(INVOICE_OVERDUE, customer, 1)]
    missed = [alert(kind, customer, 10 + i) for i, kind in enumerate(KINDS_CYCLE * 2)]
    new = alert(CUSTOMER_DESERTING, customer, 20)
    with stream(live) as alerts:
        log_alerts(live.dsn, seen)
        last_id = alerts.take(2)[-1].id
    assert last_id is not None
    for i in range(0, len(missed), 2):  # while disconnected
        log_alerts(live.dsn, missed[i : i + 2])

    with stream(live, headers={"Last-Event-ID": last_id}) as alerts:
        assert alerts.start == int(last_id)
        caught_up = alerts.take(len(missed))
        log_alerts(live.dsn, [new])
        then = alerts.take(1)

    assert received(caught_up) == as_sent(missed)
    assert received(then) == as_sent([new])
    seqs = [int(e.id or "") for e in caught_up + then]
    assert seqs == sorted(set(seqs)) and seqs[0] > int(last_id)


def test_after_resumes_like_last_event_id_and_the_header_wins(live: Api) -> None:
    customer = f"C-S3-{uuid.uuid4().hex[:8]}"
    first, second = alert(INVOICE_OVERDUE, customer, 0), alert(INVOICE_OVERDUE, customer, 1)
    with stream(live) as alerts:
        start = alerts.start
        log_alerts(live.dsn, [first])
        log_alerts(live.dsn, [second])
        first_id = alerts.take(2)[0].id
    assert first_id is not None

    with stream(live, after=start) as by_query:
        from_query = by_query.take(2)
    with stream(live, headers={"Last-Event-ID": first_id}, after=start) as by_header:
        from_header = by_header.take(1)

    assert received(from_query) == as_sent([first, second])
    assert received(from_header) == as_sent([second])


def test_a_stream_filtered_by_kind_sends_only_those_kinds(live: Api) -> None:
    customer = f"C-S4-{uuid.uuid4().hex[:8]}"
    mixed = [alert(KINDS_CYCLE[i % 3], customer, i) for i in range(7)]
    wanted = [a for a in mixed if a.kind in (INVOICE_OVERDUE, CUSTOMER_DESERTING)]
    sentinel = alert(INVOICE_OVERDUE, customer, 99)  # any other kind would arrive before it

    with stream(live, kind=[INVOICE_OVERDUE, CUSTOMER_DESERTING]) as alerts:
        log_alerts(live.dsn, mixed)
        log_alerts(live.dsn, [sentinel])
        events = alerts.take(len(wanted) + 1)

    assert received(events) == as_sent([*wanted, sentinel])


def test_a_stream_with_an_unknown_kind_or_bad_last_event_id_is_refused(live: Api) -> None:
    unknown_kind = httpx.get(f"{live.url}/alerts/stream", params={"kind": "nope"}, timeout=10)
    bad_id = httpx.get(f"{live.url}/alerts/stream", headers={"Last-Event-ID": "x"}, timeout=10)

    assert unknown_kind.status_code == 422
    assert "got 'nope'" in unknown_kind.json()["detail"]
    assert bad_id.status_code == 422


def test_open_streams_share_one_listen_connection_that_reconnects(live: Api) -> None:
    customer = f"C-S5-{uuid.uuid4().hex[:8]}"
    before, after = alert(INVOICE_OVERDUE, customer, 0), alert(INVOICE_OVERDUE, customer, 1)
    with stream(live) as one, stream(live) as two, stream(live, kind=INVOICE_OVERDUE) as three:
        [pid] = feed_backends(live.dsn)
        log_alerts(live.dsn, [before])
        assert [received(s.take(1)) for s in (one, two, three)] == [as_sent([before])] * 3

        with psycopg.connect(live.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_until(
            lambda: len(pids := feed_backends(live.dsn)) == 1 and pids != [pid],
            timeout=30,
            what="the alert feed to reconnect",
        )
        log_alerts(live.dsn, [after])

        assert [received(s.take(1)) for s in (one, two, three)] == [as_sent([after])] * 3
    assert "event=alert_feed_down" in live.service.log()


def test_the_feed_wakes_its_waiters_on_notify_also_after_reconnecting(
    fresh_database: str,
) -> None:
    async def woken_by_notify(feed: AlertFeed) -> bool:
        change = feed.next_change()
        await log_alerts_async(fresh_database, [alert(INVOICE_OVERDUE, "C-F1")])
        await feed.wait(change, timeout=STREAM_DEADLINE_S)
        return change.is_set()

    async def listening(feed: AlertFeed, other_than: list[int]) -> None:
        while not (feed.listening and feed_backends(fresh_database) not in ([], other_than)):
            await asyncio.sleep(0.05)

    async def run() -> tuple[bool, bool]:
        feed = AlertFeed(fresh_database)
        feed.start()
        try:
            await asyncio.wait_for(listening(feed, []), STREAM_DEADLINE_S)
            first = await woken_by_notify(feed)
            pids = feed_backends(fresh_database)
            with psycopg.connect(fresh_database, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
            await asyncio.wait_for(listening(feed, pids), STREAM_DEADLINE_S)
            return first, await woken_by_notify(feed)
        finally:
            await feed.stop()

    assert asyncio.run(run()) == (True, True)
    assert feed_backends(fresh_database) == []  # stopped: its connection is closed


def test_streams_and_the_feed_carry_on_after_the_database_restarts(
    postgres_root: Path, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    customer = f"C-R-{uuid.uuid4().hex[:8]}"
    before, after = alert(INVOICE_OVERDUE, customer, 0), alert(CREDIT_LIMIT_EXCEEDED, customer, 1)
    server = EmbeddedPostgres(postgres_root / f"restart-{uuid.uuid4().hex}" / "data", free_port())
    with server, api_on(server.url, broker.bootstrap, tmp_path / "api.log") as api:
        with stream(api) as alerts:
            log_alerts(server.url, [before])
            assert received(alerts.take(1)) == as_sent([before])
            [pid] = feed_backends(server.url)

            server.stop()
            server.start()
            log_alerts(server.url, [after])

            assert received(alerts.take(1)) == as_sent([after])
        wait_until(
            lambda: len(pids := feed_backends(server.url)) == 1 and pids != [pid],
            timeout=30,
            what="the alert feed to listen again",
        )
        wait_until(
            lambda: get_alerts(api).status_code == 200,
            timeout=30,
            what="the read pool to reconnect",
        )
        assert ids(get_alerts(api, customer_id=customer)) == [after.alert_id, before.alert_id]
