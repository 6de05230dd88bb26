"""The orjson wire format: size limit, malformed bytes, round trips, Decimal as a string."""

from __future__ import annotations

import string
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.codec import DEFAULT_MAX_BYTES, decode, encode, encode_json
from events.currencies import ISO_4217
from events.envelope import validate_envelope
from events.errors import InvalidEvent
from tests.unit.examples import VALID_PAYLOADS, envelope


def wire(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data)


def decode_error(raw: bytes, **kwargs: Any) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as caught:
        decode(raw, **kwargs)
    return caught.value


# --- size --------------------------------------------------------------------------------


def test_a_message_exactly_at_the_size_limit_is_accepted() -> None:
    raw = wire(envelope("purchase.made"))

    assert decode(raw, max_bytes=len(raw)).type == "purchase.made"


def test_a_message_one_byte_above_the_size_limit_is_a_size_violation() -> None:
    raw = wire(envelope("purchase.made"))

    error = decode_error(raw, max_bytes=len(raw) - 1)

    assert (error.code, error.field) == ("size_violation", "")
    assert str(len(raw)) in error.message


def test_the_size_limit_counts_bytes_not_characters() -> None:
    raw = wire(envelope("customer.registered", {"name": "Zoë Ångström"}))
    characters = len(raw.decode())

    assert len(raw) > characters
    assert decode_error(raw, max_bytes=characters).code == "size_violation"


def test_an_oversized_message_is_a_size_violation_before_it_is_parsed() -> None:
    error = decode_error(b"x" * (DEFAULT_MAX_BYTES + 1))

    assert error.code == "size_violation"


def test_a_message_padded_to_exactly_the_default_limit_of_64_kib_is_accepted() -> None:
    raw = wire(envelope("purchase.made"))
    padded = raw + b" " * (64 * 1024 - len(raw))  # JSON allows trailing whitespace

    assert decode(padded).type == "purchase.made"
    assert decode_error(padded + b" ").code == "size_violation"


# --- malformed bytes ---------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 2, 10])
def test_truncated_json_is_invalid_json(cut: int) -> None:
    raw = wire(envelope("purchase.made"))

    error = decode_error(raw[:-cut])

    assert (error.code, error.field) == ("invalid_json", "")


def test_invalid_utf8_bytes_are_invalid_json() -> None:
    raw = wire(envelope("purchase.made")).replace(b'"sales"', b'"sal\xffes"')

    error = decode_error(raw)

    assert (error.code, error.field) == ("invalid_json", "")
    assert "UTF-8" in error.message


@pytest.mark.parametrize(
    "raw", [b"", b"   ", b"{", b"not json", b"{'type': 'purchase.made'}", b'{"a": NaN}']
)
def test_bytes_that_are_not_json_are_invalid_json(raw: bytes) -> None:
    assert decode_error(raw).code == "invalid_json"


def test_valid_json_that_is_not_an_object_is_a_schema_violation() -> None:
    assert decode_error(b"[1, 2, 3]").code == "schema_violation"


def test_decode_validates_against_the_catalog() -> None:
    error = decode_error(wire(envelope("purchase.made", type="purchase.teleported")))

    assert error.code == "unknown_type"


# --- round trip --------------------------------------------------------------------------


@pytest.mark.parametrize("type_", sorted(VALID_PAYLOADS))
def test_encode_then_decode_gives_back_the_original_envelope(type_: str) -> None:
    original = validate_envelope(envelope(type_, correlation_id="req-17"))

    assert decode(encode(original)) == original


def test_encode_writes_occurred_at_as_an_rfc_3339_utc_timestamp() -> None:
    encoded = orjson.loads(encode(validate_envelope(envelope("web.visited"))))

    assert encoded["occurred_at"] == "2026-01-05T08:15:30.250000+00:00"


def test_encode_leaves_out_an_absent_correlation_id() -> None:
    encoded = orjson.loads(encode(validate_envelope(envelope("web.visited"))))

    assert "correlation_id" not in encoded


def test_encode_keeps_money_as_the_decimal_string_it_was_sent_as() -> None:
    encoded = orjson.loads(encode(validate_envelope(envelope("purchase.made"))))

    assert encoded["payload"]["total"] == "129.90"
    assert encoded["payload"]["items"][1]["unit_price"] == "14.95"


# --- encode_json -------------------------------------------------------------------------


def test_encode_json_writes_a_decimal_as_a_string_keeping_its_digits() -> None:
    assert encode_json({"total": Decimal("129.90")}) == b'{"total":"129.90"}'


def test_encode_json_writes_decimals_nested_in_lists_and_objects_as_strings() -> None:
    value = {"lines": [{"amount": Decimal("0.0001")}, Decimal("10")], "n": 3}

    assert orjson.loads(encode_json(value)) == {"lines": [{"amount": "0.0001"}, "10"], "n": 3}


def test_encode_json_still_refuses_what_it_cannot_write() -> None:
    with pytest.raises(TypeError):
        encode_json({"x": object()})


# --- property: any valid purchase.made survives the wire ---------------------------------

digits = st.text(string.digits, min_size=1, max_size=4)
money = st.builds(
    lambda whole, fraction: str(whole) + ("" if fraction is None else "." + fraction),
    st.integers(min_value=0, max_value=10**15 - 1),
    st.none() | digits,
)
customer_ids = st.text(string.ascii_letters + string.digits + "_.:-", min_size=1, max_size=64)
offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
aware_datetimes = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=offsets
)
words = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(
    str.strip
)
items = st.fixed_dictionaries(
    {"sku": words, "quantity": st.integers(min_value=1, max_value=10_000), "unit_price": money},
    optional={"name": words},
)
purchases = st.fixed_dictionaries(
    {
        "event_id": st.uuids().map(str),
        "type": st.just("purchase.made"),
        "schema_version": st.just(1),
        "customer_id": customer_ids,
        "occurred_at": aware_datetimes.map(datetime.isoformat),
        "source": words,
        "payload": st.fixed_dictionaries(
            {
                "order_id": words,
                "items": st.lists(items, min_size=1, max_size=5),
                "total": money,
                "currency": st.sampled_from(sorted(ISO_4217)),
            }
        ),
    },
    optional={"correlation_id": words},
)


@settings(database=None)
@given(purchases)
def test_any_valid_purchase_made_envelope_survives_encode_and_decode(data: dict[str, Any]) -> None:
    original = validate_envelope(data)

    assert decode(encode(original)) == original
    assert decode(wire(data)) == original
    assert original.occurred_at == datetime.fromisoformat(data["occurred_at"])
    assert original.occurred_at.tzinfo is UTC
    assert original.payload["total"] == data["payload"]["total"]


@settings(database=None)
@given(money)
def test_any_generated_money_string_is_a_valid_total(amount: str) -> None:
    data = envelope("purchase.made")
    data["payload"]["total"] = amount

    assert decode(encode_json(data)).payload["total"] == amount
    assert Decimal(amount) >= 0
