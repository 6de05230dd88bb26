"""The producer SDK without a broker: what it builds, what it refuses, and what it spools.

Every producer here points at a port nobody listens on, so each accepted event ends in the spool,
where the tests read it back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from events import InvalidEvent, validate_envelope
from events.catalog import CATALOG
from events.codec import decode
from events.producer import EventDropped, Item, TouchpointProducer
from events.spool import Spool, SpooledRecord
from events.topics import TOUCHPOINTS
from infra.ports import free_port
from tests.unit.examples import CUSTOMER_ID, SOURCE, VALID_PAYLOADS, envelope

MONEY = {"total", "amount", "credit_limit"}

Offline = Callable[..., TouchpointProducer]


@pytest.fixture
def offline(tmp_path: Path) -> Iterator[Offline]:
    """Makes producers whose broker refuses connections, spooling into tmp_path/spool."""
    made: list[TouchpointProducer] = []

    def make(**options: Any) -> TouchpointProducer:
        options.setdefault("spool_dir", tmp_path / "spool")
        producer = TouchpointProducer(
            f"127.0.0.1:{free_port()}", source=SOURCE, max_block_ms=100, **options
        )
        made.append(producer)
        return producer

    yield make
    for producer in made:
        producer.close(timeout=0)


def spooled(directory: Path) -> list[SpooledRecord]:
    spool = Spool(directory)
    try:
        return list(spool.peek_batch(10_000).records)
    finally:
        spool.close()


def typed_arguments(type_: str) -> dict[str, Any]:
    """The example payload of `type_` as a department would pass it to the typed method:
    Decimal money, `Item` and mapping lines, `date` and aware `datetime` values."""
    arguments = dict(VALID_PAYLOADS[type_])
    for name in MONEY & arguments.keys():
        arguments[name] = Decimal(arguments[name])
    if "items" in arguments:
        first, second = arguments["items"]
        arguments["items"] = [
            Item(first["sku"], first["quantity"], Decimal(first["unit_price"]), first["name"]),
            {**second, "unit_price": Decimal(second["unit_price"])},
        ]
    if "due_date" in arguments:
        arguments["due_date"] = date.fromisoformat(arguments["due_date"])
    if "due_at" in arguments:
        arguments["due_at"] = datetime.fromisoformat(arguments["due_at"].replace("Z", "+00:00"))
    return arguments


def test_typed_methods_spool_valid_envelopes_in_order_exactly_once(
    offline: Offline, tmp_path: Path
) -> None:
    producer = offline()
    sent = []
    for type_ in CATALOG.types:
        method = getattr(producer, type_.replace(".", "_"))
        sent.append((type_, method(CUSTOMER_ID, correlation_id="op-1", **typed_arguments(type_))))
    assert producer.pending() == len(sent)
    producer.close(timeout=0)
    assert producer.stats.spooled == len(sent) and producer.stats.dropped == 0

    records = spooled(tmp_path / "spool")
    assert [r.topic for r in records] == [TOUCHPOINTS] * len(sent)
    assert {r.key for r in records} == {CUSTOMER_ID.encode()}
    envelopes = [decode(r.value) for r in records]
    assert [(e.type, e.event_id) for e in envelopes] == sent
    for e in envelopes:
        expected = dict(VALID_PAYLOADS[e.type])  # money: the decimal strings of the examples
        if "due_at" in expected:
            expected["due_at"] = "2026-01-12T09:00:00+00:00"  # datetime.isoformat() of the same
        assert e.payload == expected
        assert (e.source, e.correlation_id, e.occurred_at.tzinfo) == (SOURCE, "op-1", UTC)


def test_money_is_written_as_decimal_string_never_float(offline: Offline, tmp_path: Path) -> None:
    producer = offline()
    producer.purchase_refunded("C-1", order_id="O-1", amount=Decimal("1E+1"), currency="EUR")
    producer.credit_terms_set("C-1", credit_limit=5000, currency="EUR", payment_terms_days=30)
    producer.close(timeout=0)
    payloads = [orjson.loads(r.value)["payload"] for r in spooled(tmp_path / "spool")]
    assert (payloads[0]["amount"], payloads[1]["credit_limit"]) == ("10", "5000")


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.payment_received("C-1", payment_id="P-1", amount=12.5, currency="EUR"),
        lambda p: p.purchase_made(
            "C-1", order_id="O-1", items=[Item("S", 1, 0.1)], total="0.10", currency="EUR"
        ),
    ],
)
def test_float_money_raises_type_error_and_nothing_is_spooled(
    offline: Offline, call: Callable[[TouchpointProducer], str]
) -> None:
    producer = offline()
    with pytest.raises(TypeError, match="not float"):
        call(producer)
    assert producer.pending() == 0 and producer.stats.spooled == 0


NAIVE = datetime(2026, 1, 1)


@pytest.mark.parametrize(
    ("type_", "change", "field"),
    [
        ("call.logged", {"direction": "up"}, "payload.direction"),
        ("purchase.refunded", {"amount": "-1"}, "payload.amount"),
        ("payment.received", {"currency": "EU"}, "payload.currency"),
        ("purchase.made", {"items": [{"sku": "S", "quantity": 0}]}, "payload.items[0].quantity"),
        ("invoice.issued", {"due_date": "1.2.2026"}, "payload.due_date"),
        ("followup.scheduled", {"due_at": NAIVE}, "payload.due_at"),
        ("web.visited", {"customer_id": "no spaces allowed"}, "customer_id"),
        ("web.visited", {"event_id": "42"}, "event_id"),
        ("web.visited", {"occurred_at": NAIVE}, "occurred_at"),
        ("web.visited", {"source": ""}, "source"),
    ],
)
def test_bad_field_raises_invalid_event_naming_it_and_nothing_is_spooled(
    offline: Offline, type_: str, change: dict[str, Any], field: str
) -> None:
    producer = offline()
    arguments = {**typed_arguments(type_), **change}
    customer_id = arguments.pop("customer_id", CUSTOMER_ID)
    with pytest.raises(InvalidEvent) as caught:
        getattr(producer, type_.replace(".", "_"))(customer_id, **arguments)
    assert caught.value.field == field
    assert producer.pending() == 0 and producer.stats.spooled == 0


@pytest.mark.parametrize(
    ("type_", "payload", "version", "field"),
    [
        ("web.visited", {**VALID_PAYLOADS["web.visited"], "referrer": "x"}, 1, "payload.referrer"),
        ("web.visited", VALID_PAYLOADS["web.visited"], 9, "schema_version"),
        ("web.visit", VALID_PAYLOADS["web.visited"], 1, "type"),
    ],
)
def test_generic_send_validates_like_the_typed_methods(
    offline: Offline, type_: str, payload: dict[str, Any], version: int, field: str
) -> None:
    producer = offline()
    with pytest.raises(InvalidEvent) as caught:
        producer.send(type_, CUSTOMER_ID, payload, schema_version=version)
    assert caught.value.field == field
    assert producer.pending() == 0


def test_oversized_event_is_refused_before_sending(offline: Offline) -> None:
    producer = offline()
    items = [Item(f"SKU-{i}", 1, 1, "x" * 200) for i in range(500)]
    with pytest.raises(InvalidEvent) as caught:
        producer.purchase_made("C-1", order_id="O-1", items=items, total=500, currency="EUR")
    assert caught.value.code == "size_violation"
    assert producer.pending() == 0


def test_send_envelope_takes_the_wire_form_and_generates_a_missing_event_id(
    offline: Offline, tmp_path: Path
) -> None:
    producer = offline()
    given = envelope("complaint.filed")
    anonymous = envelope("complaint.resolved", event_id=None)
    assert producer.send_envelope(given) == given["event_id"]
    generated = producer.send_envelope(anonymous)
    assert anonymous["event_id"] is None  # the caller's dict is left alone
    producer.close(timeout=0)
    values = [orjson.loads(r.value) for r in spooled(tmp_path / "spool")]
    assert [v["event_id"] for v in values] == [given["event_id"], generated]
    assert validate_envelope(values[1]).occurred_at == validate_envelope(given).occurred_at


def test_full_spool_calls_on_drop_with_the_event_bytes(offline: Offline) -> None:
    drops: list[tuple[bytes, Exception]] = []
    producer = offline(spool_max_bytes=1, on_drop=lambda value, error: drops.append((value, error)))
    event_id = producer.web_visited("C-1", url="https://shop.example/")
    [(value, error)] = drops
    assert orjson.loads(value)["event_id"] == event_id
    assert "full" in str(error)
    assert (producer.stats.spooled, producer.stats.dropped, producer.pending()) == (0, 1, 0)


def test_full_spool_without_on_drop_raises_event_dropped(offline: Offline, tmp_path: Path) -> None:
    producer = offline(spool_max_bytes=1)
    with pytest.raises(EventDropped, match=str(tmp_path / "spool")):
        producer.web_visited("C-1", url="https://shop.example/")
    assert producer.stats.dropped == 1


def test_closed_producer_refuses_to_send(offline: Offline) -> None:
    producer = offline()
    producer.close()
    with pytest.raises(RuntimeError, match="closed"):
        producer.web_visited("C-1", url="https://shop.example/")


def test_default_spool_dir_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRM_SPOOL_DIR", str(tmp_path / "env-spool"))
    with TouchpointProducer(f"127.0.0.1:{free_port()}", source=SOURCE, max_block_ms=100) as p:
        p.web_visited("C-1", url="https://shop.example/")
    assert len(spooled(tmp_path / "env-spool")) == 1
