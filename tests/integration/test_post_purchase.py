"""Post-purchase follow-ups end to end: a purchase above its currency's threshold schedules one
`followup.scheduled` through the normal intake (projector → intake outbox → relay →
crm.touchpoints → recorder), exactly once through resent purchases and a `kill -9` of the
projector and of the relay; it shows in GET /followups like any other follow-up."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from infra.broker import EmbeddedBroker
from infra.postgres import EmbeddedPostgres
from tests.integration.complaint_stack import Stack, pipeline, z
from tests.integration.helpers import query, wait_until

pytestmark = pytest.mark.integration

TAG = uuid.uuid4().hex[:6]
DELAY = timedelta(days=7)
THRESHOLD = 500
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def stack(
    broker: EmbeddedBroker, postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    logs, spool = tmp_path_factory.mktemp("post-purchase-logs"), tmp_path_factory.mktemp("spool")
    thresholds = orjson.dumps({"EUR": str(THRESHOLD)}).decode()
    with pipeline(broker, postgres, logs, spool, CRM_FOLLOWUP_PURCHASE_THRESHOLDS=thresholds,
                  CRM_FOLLOWUP_PURCHASE_DELAY_DAYS=str(DELAY.days)) as world:  # fmt: skip
        yield world


def purchase(
    stack: Stack, customer: str, total: int, at: datetime, currency: str = "EUR", **ids: str
) -> str:
    item = {"sku": "SKU-1", "name": "Thing", "quantity": 1, "unit_price": f"{total}.00"}
    return stack.send(
        "purchase_made", customer, order_id=f"O-{uuid.uuid4().hex[:8]}", items=[item],
        total=f"{total}.00", currency=currency, occurred_at=at, **ids,
    )  # fmt: skip


def scheduled(dsn: str, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """(customer, payload) of every recorded followup.scheduled of customers with the prefix."""
    found = query(
        dsn,
        "SELECT originator_id, state FROM crm_events WHERE topic = 'followup.scheduled' "
        "AND originator_id LIKE %s ORDER BY notification_id",
        (prefix + "%",),
    )
    return [(str(c), orjson.loads(bytes(s))["payload"]) for c, s in found]  # type: ignore[arg-type]


def test_a_large_purchase_schedules_one_follow_up_the_set_days_later(stack: Stack) -> None:
    customer = f"{TAG}-one"
    big = purchase(stack, customer, 600, NOW - timedelta(hours=1))
    purchase(stack, customer, THRESHOLD, NOW)  # not above the threshold
    purchase(stack, customer, 900, NOW, currency="USD")  # no threshold in USD
    purchase(stack, customer, 800, NOW - DELAY - timedelta(days=1))  # its call would be due
    purchase(stack, customer, 600, NOW - timedelta(hours=1), event_id=big)  # resent
    stack.flush()

    wait_until(lambda: scheduled(stack.dsn, customer), timeout=60, what="the follow-up",
               log=stack.log)  # fmt: skip
    time.sleep(2)  # anything more would have come by now
    [(who, payload)] = scheduled(stack.dsn, customer)

    assert who == customer
    assert payload["followup_id"] == f"post-purchase-{big}"
    assert payload["due_at"] == z(NOW - timedelta(hours=1) + DELAY)
    assert "600.00 EUR" in payload["reason"]
    answer = stack.api.get("/followups", params={"customer_id": customer})
    assert answer.status_code == 200, answer.text
    assert [(f["followup_id"], f["status"]) for f in answer.json()["followups"]] == [
        (f"post-purchase-{big}", "open")
    ]


def test_follow_ups_are_scheduled_exactly_once_through_resends_and_kill_9(stack: Stack) -> None:
    prefix = f"{TAG}-k9-"
    customers = [f"{prefix}{n}" for n in range(50)]
    ids = [
        purchase(stack, customers[n % 50], 501 + n, NOW - timedelta(minutes=n)) for n in range(400)
    ]
    stack.flush()
    wait_until(lambda: len(scheduled(stack.dsn, prefix)) >= 40, timeout=90,
               what="the first follow-ups", log=stack.log)  # fmt: skip
    stack.services["services.projector"].kill9()
    for n, event_id in enumerate(ids[::5]):  # a fifth of them sent again
        purchase(stack, customers[n * 5 % 50], 501 + n * 5, NOW, event_id=event_id)
    stack.services["services.projector"].start()
    stack.flush()
    wait_until(lambda: len(scheduled(stack.dsn, prefix)) >= len(ids) // 2, timeout=90,
               what="half of the follow-ups", log=stack.log)  # fmt: skip
    stack.services["services.relay"].kill9()
    stack.services["services.relay"].start()

    wait_until(lambda: len(scheduled(stack.dsn, prefix)) >= len(ids), timeout=120,
               what="every follow-up", log=stack.log)  # fmt: skip
    time.sleep(2)
    followups = [payload["followup_id"] for _, payload in scheduled(stack.dsn, prefix)]

    assert sorted(followups) == sorted(f"post-purchase-{event_id}" for event_id in ids)
