"""The envelope and payload rules of the wire contract, through `validate_envelope`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from events.catalog import CATALOG
from events.codec import decode, encode
from events.envelope import Envelope, validate_envelope
from events.errors import InvalidEvent
from tests.unit.examples import VALID_PAYLOADS, envelope

ALL_TYPES = sorted(VALID_PAYLOADS)
REQUIRED_ENVELOPE_FIELDS = [
    "event_id",
    "type",
    "schema_version",
    "customer_id",
    "occurred_at",
    "source",
    "payload",
]


def rejected(data: Any) -> InvalidEvent:
    with pytest.raises(InvalidEvent) as caught:
        validate_envelope(data)
    return caught.value


def purchase(**payload_changes: Any) -> dict[str, Any]:
    data = envelope("purchase.made")
    data["payload"].update(payload_changes)
    return data


def with_payload(type_: str, **payload_changes: Any) -> dict[str, Any]:
    data = envelope(type_)
    data["payload"].update(payload_changes)
    return data


# --- every catalog type ------------------------------------------------------------------


def test_the_examples_cover_every_type_of_the_catalog() -> None:
    assert sorted(VALID_PAYLOADS) == CATALOG.types


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_a_valid_example_of_every_catalog_type_is_accepted_as_sent(type_: str) -> None:
    result = validate_envelope(envelope(type_))

    assert isinstance(result, Envelope)
    assert result.type == type_
    assert result.schema_version == 1
    assert result.customer_id == "C-0042"
    assert result.source == "sales"
    assert result.payload == VALID_PAYLOADS[type_]
    assert result.correlation_id is None


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_a_valid_example_of_every_catalog_type_round_trips_through_the_wire(type_: str) -> None:
    original = validate_envelope(envelope(type_, correlation_id="req-17"))

    assert decode(encode(original)) == original
    assert validate_envelope(original.to_dict() | {"occurred_at": "2026-01-05T08:15:30.25Z"}) == (
        original
    )


def test_the_correlation_id_is_kept_when_given() -> None:
    assert validate_envelope(envelope("web.visited", correlation_id="req-17")).correlation_id == (
        "req-17"
    )


def test_a_correlation_id_given_as_null_is_the_same_as_none() -> None:
    assert validate_envelope(envelope("web.visited", correlation_id=None)).correlation_id is None


# --- envelope fields ---------------------------------------------------------------------


@pytest.mark.parametrize("field", REQUIRED_ENVELOPE_FIELDS)
def test_a_missing_envelope_field_is_rejected_naming_the_field(field: str) -> None:
    data = envelope("purchase.made")
    del data[field]

    error = rejected(data)

    assert (error.code, error.field) == ("schema_violation", field)
    assert "required" in error.message


@pytest.mark.parametrize("field", REQUIRED_ENVELOPE_FIELDS)
def test_a_required_envelope_field_given_as_null_is_rejected_naming_the_field(field: str) -> None:
    data = envelope("purchase.made")
    data[field] = None

    error = rejected(data)

    assert (error.code, error.field) == ("schema_violation", field)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_id", 42),
        ("type", 5),
        ("type", ["purchase.made"]),
        ("schema_version", "1"),
        ("schema_version", 1.5),
        ("customer_id", 42),
        ("occurred_at", 1767600930),
        ("source", 7),
        ("payload", []),
        ("payload", "order O-1001"),
        ("correlation_id", 17),
    ],
)
def test_an_envelope_field_of_the_wrong_type_is_rejected_naming_the_field(
    field: str, value: Any
) -> None:
    error = rejected(envelope("purchase.made", **{field: value}))

    assert (error.code, error.field) == ("schema_violation", field)


def test_a_bool_given_as_schema_version_is_rejected_naming_the_field() -> None:
    error = rejected(envelope("purchase.made", schema_version=True))

    assert (error.code, error.field) == ("schema_violation", "schema_version")


@pytest.mark.parametrize("version", [0, -1])
def test_a_schema_version_below_one_is_a_schema_violation(version: int) -> None:
    error = rejected(envelope("purchase.made", schema_version=version))

    assert (error.code, error.field) == ("schema_violation", "schema_version")


def test_an_unknown_top_level_field_is_rejected_naming_the_field() -> None:
    error = rejected(envelope("purchase.made", priority="high"))

    assert (error.code, error.field) == ("schema_violation", "priority")
    assert "unknown" in error.message


@pytest.mark.parametrize("value", [[], "a message", 42, None])
def test_a_message_that_is_not_a_json_object_is_rejected_as_a_whole(value: Any) -> None:
    error = rejected(value)

    assert (error.code, error.field) == ("schema_violation", "")


@pytest.mark.parametrize(
    "customer_id", ["C 42", "C/42", "kunde-ü", "C-42;drop", "", "x" * 65, "C-42\n"]
)
def test_a_customer_id_with_bad_characters_or_length_is_rejected_naming_the_field(
    customer_id: str,
) -> None:
    error = rejected(envelope("purchase.made", customer_id=customer_id))

    assert (error.code, error.field) == ("schema_violation", "customer_id")


@pytest.mark.parametrize("customer_id", ["x", "x" * 64, "Acme_Corp.EU:42-b"])
def test_a_customer_id_of_one_to_sixty_four_allowed_characters_is_accepted(
    customer_id: str,
) -> None:
    assert validate_envelope(envelope("purchase.made", customer_id=customer_id)).customer_id == (
        customer_id
    )


@pytest.mark.parametrize(
    "occurred_at",
    [
        "2026-01-05T10:15:30",
        "2026-01-05T10:15:30.250",
        "2026-01-05",
        "2026-02-30T10:00:00Z",
        "2026-01-05T25:00:00Z",
        "2026-01-05T10:15:30+0200",
        "5 January 2026",
        "",
    ],
)
def test_an_occurred_at_without_offset_or_not_a_real_instant_is_rejected_naming_the_field(
    occurred_at: str,
) -> None:
    error = rejected(envelope("purchase.made", occurred_at=occurred_at))

    assert (error.code, error.field) == ("schema_violation", "occurred_at")


def test_an_occurred_at_with_a_plus_two_hours_offset_becomes_the_same_instant_in_utc() -> None:
    result = validate_envelope(envelope("purchase.made", occurred_at="2026-01-05T10:15:30+02:00"))

    assert result.occurred_at == datetime(2026, 1, 5, 8, 15, 30, tzinfo=UTC)
    assert result.occurred_at.tzinfo is UTC
    assert result.occurred_at.hour == 8


@pytest.mark.parametrize(
    ("occurred_at", "expected"),
    [
        ("2026-01-05T08:15:30Z", datetime(2026, 1, 5, 8, 15, 30, tzinfo=UTC)),
        ("2026-01-05T08:15:30.123456Z", datetime(2026, 1, 5, 8, 15, 30, 123456, tzinfo=UTC)),
        ("2026-01-04T21:45:30-10:30", datetime(2026, 1, 5, 8, 15, 30, tzinfo=UTC)),
        # RFC 3339 section 5.6: "T" and "Z" may alternatively be lower case.
        ("2026-01-05t08:15:30Z", datetime(2026, 1, 5, 8, 15, 30, tzinfo=UTC)),
        ("2026-01-05T08:15:30z", datetime(2026, 1, 5, 8, 15, 30, tzinfo=UTC)),
    ],
)
def test_an_occurred_at_with_any_rfc_3339_offset_is_read_as_its_instant_in_utc(
    occurred_at: str, expected: datetime
) -> None:
    result = validate_envelope(envelope("purchase.made", occurred_at=occurred_at))

    assert result.occurred_at == expected
    assert result.occurred_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize("occurred_at", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:30:00-01:00"])
def test_an_occurred_at_whose_utc_instant_falls_outside_the_calendar_is_a_schema_violation(
    occurred_at: str,
) -> None:
    error = rejected(envelope("purchase.made", occurred_at=occurred_at))

    assert (error.code, error.field) == ("schema_violation", "occurred_at")


@pytest.mark.parametrize(
    "event_id",
    ["3F1C9A52-8D7E-4B6A-9C1D-2E5F7A8B9C0D", "3f1c9a52-8D7E-4b6a-9C1D-2e5f7a8b9c0d"],
)
def test_an_event_id_is_normalised_to_the_lowercase_canonical_uuid(event_id: str) -> None:
    result = validate_envelope(envelope("purchase.made", event_id=event_id))

    assert result.event_id == "3f1c9a52-8d7e-4b6a-9c1d-2e5f7a8b9c0d"


@pytest.mark.parametrize(
    "event_id",
    ["not-a-uuid", "3f1c9a52-8d7e-4b6a-9c1d", "", "3f1c9a52-8d7e-4b6a-9c1d-2e5f7a8b9c0g"],
)
def test_an_event_id_that_is_not_a_uuid_is_rejected_naming_the_field(event_id: str) -> None:
    error = rejected(envelope("purchase.made", event_id=event_id))

    assert (error.code, error.field) == ("schema_violation", "event_id")


@pytest.mark.parametrize("source", ["", "   ", "\t\n", "s" * 65])
def test_an_empty_blank_or_too_long_source_is_rejected_naming_the_field(source: str) -> None:
    error = rejected(envelope("purchase.made", source=source))

    assert (error.code, error.field) == ("schema_violation", "source")


@pytest.mark.parametrize("correlation_id", ["", "  ", "c" * 201])
def test_an_empty_blank_or_too_long_correlation_id_is_rejected_naming_the_field(
    correlation_id: str,
) -> None:
    error = rejected(envelope("purchase.made", correlation_id=correlation_id))

    assert (error.code, error.field) == ("schema_violation", "correlation_id")


# --- type and version --------------------------------------------------------------------


def test_an_unknown_type_is_rejected_as_unknown_type_naming_the_field() -> None:
    data = envelope("purchase.made", type="purchase.teleported")

    error = rejected(data)

    assert (error.code, error.field) == ("unknown_type", "type")
    assert "purchase.teleported" in error.message


def test_an_unknown_type_is_reported_before_anything_about_its_payload() -> None:
    error = rejected(envelope("purchase.made", type="purchase.teleported", payload="garbage"))

    assert error.code == "unknown_type"


def test_schema_version_two_of_a_type_that_only_has_version_one_is_unsupported_version() -> None:
    error = rejected(envelope("purchase.made", schema_version=2))

    assert (error.code, error.field) == ("unsupported_version", "schema_version")


# --- payload paths -----------------------------------------------------------------------


def test_a_payload_error_in_a_list_item_names_the_dotted_path_with_the_index() -> None:
    data = envelope("purchase.made")
    data["payload"]["items"][1]["quantity"] = 0

    error = rejected(data)

    assert (error.code, error.field) == ("schema_violation", "payload.items[1].quantity")
    assert str(error).startswith("payload.items[1].quantity: ")


def test_a_missing_field_of_a_list_item_names_the_dotted_path() -> None:
    data = envelope("purchase.made")
    del data["payload"]["items"][1]["sku"]

    error = rejected(data)

    assert (error.code, error.field) == ("schema_violation", "payload.items[1].sku")
    assert "required" in error.message


def test_an_unknown_field_of_a_list_item_names_the_dotted_path() -> None:
    data = envelope("purchase.made")
    data["payload"]["items"][0]["colour"] = "brass"

    error = rejected(data)

    assert (error.code, error.field) == ("schema_violation", "payload.items[0].colour")


def test_an_unknown_payload_field_is_rejected_naming_the_dotted_path() -> None:
    error = rejected(purchase(discount="10.00"))

    assert (error.code, error.field) == ("schema_violation", "payload.discount")
    assert "unknown" in error.message


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_every_missing_required_payload_field_is_rejected_naming_the_dotted_path(
    type_: str,
) -> None:
    required = [f.name for f in CATALOG.schema(type_, 1).fields if f.required]
    for name in required:
        data = envelope(type_)
        del data["payload"][name]

        error = rejected(data)

        assert (error.code, error.field) == ("schema_violation", f"payload.{name}")


@pytest.mark.parametrize("items", [[], "ENG-1", [1], None])
def test_items_that_are_not_a_non_empty_list_of_objects_are_rejected(items: Any) -> None:
    error = rejected(purchase(items=items))

    assert error.code == "schema_violation"
    assert error.field.startswith("payload.items")


def test_more_than_five_hundred_items_are_rejected() -> None:
    item = {"sku": "CARD-50", "quantity": 1, "unit_price": "1"}

    assert validate_envelope(purchase(items=[item] * 500))
    assert rejected(purchase(items=[item] * 501)).field == "payload.items"


# --- money, currency, dates ----------------------------------------------------------------


@pytest.mark.parametrize("amount", ["0", "10", "10.5", "10.1234", "999999999999999.9999"])
def test_a_money_string_with_up_to_four_decimals_is_accepted(amount: str) -> None:
    assert validate_envelope(purchase(total=amount)).payload["total"] == amount


@pytest.mark.parametrize(
    "amount",
    [
        "-1",
        "1e3",
        "10.12345",
        "01.5",
        "",
        " 10",
        "10.",
        ".5",
        "10,50",
        "1000000000000000",
        "10.5\n",
    ],
)
def test_a_malformed_money_string_is_rejected_naming_the_field(amount: str) -> None:
    error = rejected(purchase(total=amount))

    assert (error.code, error.field) == ("schema_violation", "payload.total")


@pytest.mark.parametrize("amount", [10.5, 10, True])
def test_money_given_as_a_json_number_is_rejected_naming_the_field(amount: Any) -> None:
    error = rejected(purchase(total=amount))

    assert (error.code, error.field) == ("schema_violation", "payload.total")
    assert "decimal string" in error.message


def test_a_bad_unit_price_names_the_item_it_belongs_to() -> None:
    data = envelope("purchase.made")
    data["payload"]["items"][1]["unit_price"] = 14.95

    assert rejected(data).field == "payload.items[1].unit_price"


@pytest.mark.parametrize(
    ("type_", "field"),
    [
        ("purchase.refunded", "amount"),
        ("invoice.issued", "amount"),
        ("payment.received", "amount"),
    ],
)
@pytest.mark.parametrize("amount", ["0", "0.00", "0.0000", "0\n"])
def test_a_positive_amount_rejects_zero_naming_the_field(
    type_: str, field: str, amount: str
) -> None:
    error = rejected(with_payload(type_, **{field: amount}))

    assert (error.code, error.field) == ("schema_violation", f"payload.{field}")


@pytest.mark.parametrize("amount", ["0.01", "0.0001", "10", "100.00"])
def test_a_positive_amount_accepts_anything_above_zero(amount: str) -> None:
    assert validate_envelope(with_payload("purchase.refunded", amount=amount))


def test_a_non_positive_field_such_as_a_credit_limit_accepts_zero() -> None:
    assert validate_envelope(with_payload("credit.terms.set", credit_limit="0.00"))


@pytest.mark.parametrize(
    "code",
    [
        "EUX",
        "eur",
        "EURO",
        "",
        "€",
        978,
        pytest.param(["EUR"], id="a-list"),
        pytest.param({"code": "EUR"}, id="an-object"),
    ],
)
def test_a_currency_that_is_not_an_iso_4217_code_is_rejected_naming_the_field(code: Any) -> None:
    error = rejected(purchase(currency=code))

    assert (error.code, error.field) == ("schema_violation", "payload.currency")


@pytest.mark.parametrize("code", ["EUR", "USD", "JPY", "CHF"])
def test_an_iso_4217_currency_code_is_accepted(code: str) -> None:
    assert validate_envelope(purchase(currency=code))


@pytest.mark.parametrize(
    "due_date",
    ["2026-02-30", "2025-02-29", "2026-13-01", "2026-2-4", "04.02.2026", "2026-02-04T00:00:00Z"],
)
def test_a_due_date_that_is_not_a_real_yyyy_mm_dd_date_is_rejected_naming_the_field(
    due_date: str,
) -> None:
    error = rejected(with_payload("invoice.issued", due_date=due_date))

    assert (error.code, error.field) == ("schema_violation", "payload.due_date")


def test_a_leap_day_due_date_is_accepted() -> None:
    assert validate_envelope(with_payload("invoice.issued", due_date="2028-02-29"))


@pytest.mark.parametrize("due_at", ["2026-01-12T09:00:00", "2026-01-12", "soon"])
def test_a_followup_due_at_without_offset_is_rejected_naming_the_field(due_at: str) -> None:
    error = rejected(with_payload("followup.scheduled", due_at=due_at))

    assert (error.code, error.field) == ("schema_violation", "payload.due_at")


# --- choices, integers, booleans, e-mail ----------------------------------------------------


@pytest.mark.parametrize(
    "direction",
    [
        "sideways",
        "Inbound",
        "",
        1,
        pytest.param(["inbound"], id="a-list"),
        pytest.param({"inbound": True}, id="an-object"),
    ],
)
def test_a_direction_outside_inbound_and_outbound_is_rejected_naming_the_field(
    direction: Any,
) -> None:
    error = rejected(with_payload("call.logged", direction=direction))

    assert (error.code, error.field) == ("schema_violation", "payload.direction")


@pytest.mark.parametrize("severity", ["critical", "LOW", pytest.param(["high"], id="a-list")])
def test_a_severity_outside_low_medium_high_is_rejected_naming_the_field(severity: Any) -> None:
    error = rejected(with_payload("complaint.filed", severity=severity))

    assert (error.code, error.field) == ("schema_violation", "payload.severity")


@pytest.mark.parametrize("seconds", [-1, "60", 1.5, True])
def test_a_call_duration_that_is_not_a_non_negative_integer_is_rejected(seconds: Any) -> None:
    error = rejected(with_payload("call.logged", duration_seconds=seconds))

    assert (error.code, error.field) == ("schema_violation", "payload.duration_seconds")


def test_a_call_of_zero_seconds_is_accepted() -> None:
    assert validate_envelope(with_payload("call.logged", duration_seconds=0))


@pytest.mark.parametrize("days", [-1, "30", True])
def test_negative_or_non_integer_payment_terms_are_rejected(days: Any) -> None:
    error = rejected(with_payload("credit.terms.set", payment_terms_days=days))

    assert (error.code, error.field) == ("schema_violation", "payload.payment_terms_days")


@pytest.mark.parametrize("satisfied", ["yes", 1, 0])
def test_satisfied_that_is_not_a_json_boolean_is_rejected(satisfied: Any) -> None:
    error = rejected(with_payload("complaint.resolved", satisfied=satisfied))

    assert (error.code, error.field) == ("schema_violation", "payload.satisfied")


def test_satisfied_false_is_accepted_and_kept() -> None:
    result = validate_envelope(with_payload("complaint.resolved", satisfied=False))

    assert result.payload["satisfied"] is False


@pytest.mark.parametrize("address", ["ada", "ada@", "@example.com", "ada@example", "a b@x.com"])
def test_an_email_address_that_is_not_one_is_rejected_naming_the_field(address: str) -> None:
    error = rejected(with_payload("email.logged", address=address))

    assert (error.code, error.field) == ("schema_violation", "payload.address")


# --- optional and text fields ----------------------------------------------------------------


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_every_optional_payload_field_given_as_null_is_accepted(type_: str) -> None:
    optional = [f.name for f in CATALOG.schema(type_, 1).fields if not f.required]
    data = envelope(type_)
    for name in optional:
        data["payload"][name] = None
    expected = VALID_PAYLOADS[type_] | dict.fromkeys(optional)

    assert validate_envelope(data).payload == expected


@pytest.mark.parametrize("type_", ALL_TYPES)
def test_every_optional_payload_field_may_be_left_out(type_: str) -> None:
    required = {f.name for f in CATALOG.schema(type_, 1).fields if f.required}
    payload = {k: v for k, v in VALID_PAYLOADS[type_].items() if k in required}

    assert validate_envelope(envelope(type_, payload)).payload == payload


def test_a_customer_updated_with_no_fields_at_all_is_accepted() -> None:
    assert validate_envelope(envelope("customer.updated", {})).payload == {}


@pytest.mark.parametrize("blank", ["", " ", "   ", "\t\n", "\u00a0"])
@pytest.mark.parametrize(
    ("type_", "field"),
    [
        ("customer.registered", "name"),
        ("customer.registered", "phone"),
        ("email.logged", "subject"),
        ("purchase.made", "order_id"),
        ("complaint.filed", "description"),
        ("followup.completed", "outcome"),
    ],
)
def test_empty_or_whitespace_text_is_rejected_naming_the_field(
    type_: str, field: str, blank: str
) -> None:
    error = rejected(with_payload(type_, **{field: blank}))

    assert (error.code, error.field) == ("schema_violation", f"payload.{field}")


@pytest.mark.parametrize(("length", "accepted"), [(200, True), (201, False)])
def test_a_customer_name_is_limited_to_two_hundred_characters(length: int, accepted: bool) -> None:
    data = with_payload("customer.registered", name="n" * length)

    if accepted:
        assert validate_envelope(data)
    else:
        assert rejected(data).field == "payload.name"


def test_text_given_as_a_number_is_rejected_naming_the_field() -> None:
    error = rejected(with_payload("purchase.made", order_id=1001))

    assert (error.code, error.field) == ("schema_violation", "payload.order_id")
