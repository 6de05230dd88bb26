"""Versioned schemas and upcasting, on a small catalog built here (one type at v1, v2, v3),
plus the invariants of the real catalog."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from events import envelope as envelope_module
from events.catalog import CATALOG, CUSTOMER_ID_PATTERN, Catalog, EventSchema, Payload
from events.envelope import Envelope, validate_envelope
from events.errors import InvalidEvent
from events.fields import text
from tests.unit.examples import VALID_PAYLOADS, envelope

TYPE = "contact.noted"


def split_name(payload: Payload) -> Payload:
    """v1 -> v2: `name` becomes `first_name` and `last_name`."""
    rest = {k: v for k, v in payload.items() if k != "name"}
    first, _, last = payload["name"].partition(" ")
    return rest | {"first_name": first, "last_name": last or None}


def rename_last_name(payload: Payload) -> Payload:
    """v2 -> v3: `last_name` is now called `family_name`."""
    rest = {k: v for k, v in payload.items() if k != "last_name"}
    return rest | {"family_name": payload.get("last_name")}


V1 = EventSchema(TYPE, 1, (text("name"), text("note", required=False)), "v1")
V2 = EventSchema(
    TYPE,
    2,
    (text("first_name"), text("last_name", required=False), text("note", required=False)),
    "v2",
    upcast=split_name,
)
V3 = EventSchema(
    TYPE,
    3,
    (text("first_name"), text("family_name", required=False), text("note", required=False)),
    "v3",
    upcast=rename_last_name,
)


def versioned_catalog() -> Catalog:
    return Catalog([V3, V1, V2])  # order of declaration does not matter


def contact(version: int, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "event_id": "3f1c9a52-8d7e-4b6a-9c1d-2e5f7a8b9c0d",
        "type": TYPE,
        "schema_version": version,
        "customer_id": "C-0042",
        "occurred_at": "2026-01-05T10:00:00Z",
        "source": "support",
        "payload": payload,
    }


V1_PAYLOAD = {"name": "Ada Lovelace", "note": "prefers e-mail"}
V2_PAYLOAD = {"first_name": "Ada", "last_name": "Lovelace", "note": "prefers e-mail"}
V3_PAYLOAD = {"first_name": "Ada", "family_name": "Lovelace", "note": "prefers e-mail"}


# --- upcasting ---------------------------------------------------------------------------


def test_upcasting_a_v1_envelope_yields_the_v3_payload_and_schema_version_3() -> None:
    catalog = versioned_catalog()
    v1 = validate_envelope(contact(1, V1_PAYLOAD), catalog)

    current = v1.upcast(catalog)

    assert current.schema_version == 3
    assert current.payload == V3_PAYLOAD
    V3.check(current.payload)  # the result fits the current schema


def test_upcasting_keeps_every_envelope_field_but_version_and_payload() -> None:
    catalog = versioned_catalog()
    v1 = validate_envelope(contact(1, V1_PAYLOAD) | {"correlation_id": "req-1"}, catalog)

    current = v1.upcast(catalog)

    assert current.event_id == v1.event_id
    assert current.type == TYPE
    assert current.customer_id == "C-0042"
    assert current.occurred_at == datetime(2026, 1, 5, 10, tzinfo=UTC)
    assert current.source == "support"
    assert current.correlation_id == "req-1"


def test_upcasting_leaves_the_original_envelope_as_it_was() -> None:
    catalog = versioned_catalog()
    v1 = validate_envelope(contact(1, dict(V1_PAYLOAD)), catalog)

    v1.upcast(catalog)

    assert v1.schema_version == 1
    assert v1.payload == V1_PAYLOAD


def test_upcasting_a_v2_envelope_applies_only_the_v3_upcaster() -> None:
    catalog = versioned_catalog()
    v2 = validate_envelope(contact(2, V2_PAYLOAD), catalog)

    current = v2.upcast(catalog)

    assert (current.schema_version, current.payload) == (3, V3_PAYLOAD)


def test_upcasting_a_v1_name_without_a_space_leaves_the_family_name_empty() -> None:
    catalog = versioned_catalog()
    v1 = validate_envelope(contact(1, {"name": "Plato"}), catalog)

    assert v1.upcast(catalog).payload == {"first_name": "Plato", "family_name": None}


def test_an_envelope_at_the_current_version_is_returned_unchanged() -> None:
    catalog = versioned_catalog()
    v3 = validate_envelope(contact(3, V3_PAYLOAD), catalog)

    assert v3.upcast(catalog) is v3


def test_the_catalog_upcasts_a_payload_from_any_version_to_the_current_one() -> None:
    catalog = versioned_catalog()

    assert catalog.upcast(TYPE, 1, V1_PAYLOAD) == V3_PAYLOAD
    assert catalog.upcast(TYPE, 2, V2_PAYLOAD) == V3_PAYLOAD
    assert catalog.upcast(TYPE, 3, V3_PAYLOAD) == V3_PAYLOAD


def test_upcasting_a_type_the_catalog_does_not_know_is_unknown_type() -> None:
    with pytest.raises(InvalidEvent) as caught:
        versioned_catalog().upcast("purchase.made", 1, VALID_PAYLOADS["purchase.made"])

    assert caught.value.code == "unknown_type"


def test_the_catalog_reports_the_current_version_and_its_types() -> None:
    catalog = versioned_catalog()

    assert catalog.current_version(TYPE) == 3
    assert catalog.types == [TYPE]
    assert sorted(s.version for s in catalog.schemas()) == [1, 2, 3]
    assert catalog.schema(TYPE, 2) is V2


# --- catalog construction ----------------------------------------------------------------


def test_a_catalog_with_a_gap_in_the_versions_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"contact\.noted: versions must be 1\.\.n"):
        Catalog([V1, V3])


def test_a_catalog_without_version_1_of_a_type_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"versions must be 1\.\.n"):
        Catalog([V2, V3])


def test_a_catalog_with_a_later_version_missing_its_upcaster_is_rejected() -> None:
    v2_without_upcaster = EventSchema(TYPE, 2, V2.fields, "v2")

    with pytest.raises(ValueError, match="every version after 1 needs an upcaster"):
        Catalog([V1, v2_without_upcaster, V3])


def test_an_empty_catalog_knows_no_types() -> None:
    catalog = Catalog([])

    assert catalog.types == []
    with pytest.raises(InvalidEvent) as caught:
        validate_envelope(envelope("purchase.made"), catalog)
    assert caught.value.code == "unknown_type"


# --- validation against older versions ---------------------------------------------------


@pytest.mark.parametrize(
    ("version", "payload"), [(1, V1_PAYLOAD), (2, V2_PAYLOAD), (3, V3_PAYLOAD)]
)
def test_validation_accepts_every_known_version_against_its_own_fields(
    version: int, payload: dict[str, Any]
) -> None:
    result = validate_envelope(contact(version, payload), versioned_catalog())

    assert (result.schema_version, result.payload) == (version, payload)


@pytest.mark.parametrize(
    ("version", "payload", "field"),
    [
        (1, V2_PAYLOAD, "payload.first_name"),
        (2, V1_PAYLOAD, "payload.name"),
        (2, V3_PAYLOAD, "payload.family_name"),
        (3, V2_PAYLOAD, "payload.last_name"),
    ],
)
def test_a_payload_of_another_version_is_rejected_against_the_declared_version(
    version: int, payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        validate_envelope(contact(version, payload), versioned_catalog())

    assert (caught.value.code, caught.value.field) == ("schema_violation", field)


def test_a_version_beyond_the_current_one_is_unsupported_version() -> None:
    with pytest.raises(InvalidEvent) as caught:
        validate_envelope(contact(4, V3_PAYLOAD), versioned_catalog())

    assert (caught.value.code, caught.value.field) == ("unsupported_version", "schema_version")
    assert "1 to 3" in caught.value.message


def test_asking_the_catalog_for_a_missing_version_is_unsupported_version() -> None:
    with pytest.raises(InvalidEvent) as caught:
        versioned_catalog().schema(TYPE, 4)

    assert caught.value.code == "unsupported_version"


# --- the real catalog --------------------------------------------------------------------


def test_the_real_catalog_holds_the_seventeen_types_of_catalog_v1() -> None:
    assert CATALOG.types == sorted(
        [
            "customer.registered",
            "customer.updated",
            "customer.merged",
            "call.logged",
            "email.logged",
            "purchase.made",
            "purchase.refunded",
            "complaint.filed",
            "complaint.resolved",
            "complaint.assigned",
            "complaint.reopened",
            "invoice.issued",
            "payment.received",
            "credit.terms.set",
            "web.visited",
            "followup.scheduled",
            "followup.completed",
        ]
    )


@pytest.mark.parametrize("type_", sorted(VALID_PAYLOADS))
def test_an_envelope_of_the_real_catalog_at_its_current_version_upcasts_to_itself(
    type_: str,
) -> None:
    current = validate_envelope(envelope(type_))

    assert current.schema_version == CATALOG.current_version(type_)
    assert current.upcast() is current


def test_the_envelope_upcasts_with_the_real_catalog_by_default() -> None:
    manual = Envelope(
        event_id="3f1c9a52-8d7e-4b6a-9c1d-2e5f7a8b9c0d",
        type="web.visited",
        schema_version=1,
        customer_id="C-0042",
        occurred_at=datetime(2026, 1, 5, tzinfo=UTC),
        source="web",
        payload={"url": "https://shop.example/"},
    )

    assert manual.upcast() is manual


# --- customer.merged ---------------------------------------------------------------------


def test_the_catalog_and_the_envelope_agree_on_what_a_customer_id_is() -> None:
    assert CUSTOMER_ID_PATTERN == envelope_module.CUSTOMER_ID_PATTERN


def merged(payload: Any) -> dict[str, Any]:
    return {**envelope("customer.merged"), "payload": payload}


def test_a_merge_names_the_customer_it_is_merged_into() -> None:
    event = validate_envelope(merged({"into_customer_id": "C-2"}))

    assert (event.type, event.payload) == ("customer.merged", {"into_customer_id": "C-2"})


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "payload.into_customer_id"),
        ({"into_customer_id": None}, "payload.into_customer_id"),
        ({"into_customer_id": ""}, "payload.into_customer_id"),
        ({"into_customer_id": "C 2"}, "payload.into_customer_id"),
        ({"into_customer_id": "C" * 65}, "payload.into_customer_id"),
        ({"into_customer_id": 2}, "payload.into_customer_id"),
        ({"into_customer_id": "C-2", "reason": "duplicate"}, "payload.reason"),
    ],
)
def test_a_merge_without_a_valid_customer_id_to_merge_into_is_a_schema_violation(
    payload: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        validate_envelope(merged(payload))

    assert (caught.value.code, caught.value.field) == ("schema_violation", field)
