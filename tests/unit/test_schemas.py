"""The published JSON Schemas (events/schemas/): up to date with the catalog, and in agreement
with `validate_envelope` on what is a valid message."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from events.catalog import CATALOG
from events.envelope import validate_envelope
from events.errors import InvalidEvent
from events.fields import MONEY_PATTERN, Field
from events.schemas import SCHEMA_DIR, file_name, render_all
from tests.unit.examples import VALID_PAYLOADS, envelope

REGENERATE = (
    "events/schemas/ is out of date with the catalog: run `crm schemas` and commit the result"
)


# --- the committed files -----------------------------------------------------------------


def test_the_committed_schema_files_are_exactly_the_rendered_ones() -> None:
    committed = sorted(p.name for p in SCHEMA_DIR.glob("*.json"))

    assert committed == sorted(render_all()), REGENERATE


@pytest.mark.parametrize("name", sorted(render_all()))
def test_each_committed_schema_file_equals_its_rendering_from_the_catalog(name: str) -> None:
    path = SCHEMA_DIR / name

    assert path.is_file(), f"{name} is missing; {REGENERATE}"
    assert path.read_bytes() == render_all()[name], f"{name} differs; {REGENERATE}"


def test_there_is_one_schema_per_type_and_version_of_the_catalog() -> None:
    expected = {file_name(s) for s in CATALOG.schemas()}

    assert set(render_all()) == expected
    assert len(expected) == sum(CATALOG.current_version(t) for t in CATALOG.types)


@pytest.mark.parametrize("name", sorted(render_all()))
def test_each_schema_is_a_valid_draft_2020_12_schema(name: str) -> None:
    Draft202012Validator.check_schema(committed_schema(name))


def test_the_format_checker_can_check_every_format_the_schemas_use() -> None:
    used = set()
    for name in render_all():
        used |= set(formats_in(committed_schema(name)))

    missing = used - set(Draft202012Validator.FORMAT_CHECKER.checkers)

    # jsonschema skips unknown formats silently; "date-time" needs rfc3339-validator
    # (pip install "jsonschema[format-nongpl]"), or the agreement below proves nothing.
    assert not missing, f"jsonschema cannot check the formats {sorted(missing)}"


# --- the validator and the schemas agree ---------------------------------------------------


@cache
def committed_schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / name).read_bytes())


@cache
def schema_validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(
        committed_schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def formats_in(schema: Any) -> Iterator[str]:
    if isinstance(schema, dict):
        if isinstance(schema.get("format"), str):
            yield schema["format"]
        for value in schema.values():
            yield from formats_in(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from formats_in(value)


def accepted_by_validator(data: dict[str, Any]) -> bool:
    try:
        validate_envelope(copy.deepcopy(data))
    except InvalidEvent:
        return False
    return True


def accepted_by_schema(type_: str, data: dict[str, Any]) -> bool:
    return schema_validator(f"{type_}.v1.schema.json").is_valid(data)


Sample = tuple[str, dict[str, Any], bool | None]  # type, message, expected verdict (None: any)
Mutation = Callable[[dict[str, Any]], None]


def mutated(type_: str, mutate: Mutation) -> dict[str, Any]:
    data = envelope(type_)
    mutate(data)
    return data


def set_payload(name: str, value: Any) -> Mutation:
    return lambda data: data["payload"].__setitem__(name, value)


def set_envelope(name: str, value: Any) -> Mutation:
    return lambda data: data.__setitem__(name, value)


def delete(name: str, *, in_payload: bool = True) -> Mutation:
    return lambda data: (data["payload"] if in_payload else data).pop(name)


def set_item(index: int, name: str, value: Any) -> Mutation:
    return lambda data: data["payload"]["items"][index].__setitem__(name, value)


def field_mutations(field: Field) -> Iterator[tuple[str, Any, bool]]:
    """Values to try for one payload field, with whether the contract accepts them."""
    schema = field.schema
    if schema.get("pattern") == MONEY_PATTERN:
        for bad in ["-1", "1e3", "10.12345", "01.5", "", " 10", 10.5, 10]:
            yield "bad money", bad, False
        yield "zero money", "0.00", "not" not in schema
        yield "four decimals", "10.1234", True
    elif field.name == "currency":
        for bad in ["EUX", "eur", "", 978]:
            yield "bad currency", bad, False
        yield "another currency", "JPY", True
    elif "enum" in schema:
        yield "wrong enum", "sideways", False
        yield "enum in other case", schema["enum"][0].upper(), False
        yield "enum as a number", 1, False
    elif schema.get("format") == "date":
        for bad in ["2026-02-30", "2026-2-4", "2026-02-04T00:00:00Z"]:
            yield "bad date", bad, False
        yield "leap day", "2028-02-29", True
    elif schema.get("format") == "date-time":
        for bad in ["2026-01-12T09:00:00", "2026-01-12", "2026-02-30T09:00:00Z"]:
            yield "bad timestamp", bad, False
        yield "timestamp with offset", "2026-01-12T09:00:00-05:00", True
    elif schema.get("type") == "integer":
        for bad in [-1, "5", 1.5, True]:
            yield "bad integer", bad, False
        yield "integer at the minimum", schema["minimum"], True
    elif schema.get("type") == "boolean":
        for bad in ["yes", 1, 0]:
            yield "bad boolean", bad, False
        yield "false", False, True
    elif schema.get("type") == "string" and "@" in schema.get("pattern", ""):
        for bad in ["ada", "ada@example", "@example.com"]:
            yield "bad e-mail", bad, False
    elif schema.get("type") == "string":
        for bad in ["", "   ", 7, "x" * (schema["maxLength"] + 1)]:
            yield "bad text", bad, False
        yield "longest text", "x" * schema["maxLength"], True


def payload_samples() -> Iterator[tuple[str, Sample]]:
    for type_ in sorted(VALID_PAYLOADS):
        fields = CATALOG.schema(type_, 1).fields
        yield "valid example", (type_, envelope(type_), True)
        nulls = {f.name: None for f in fields if not f.required}
        yield (
            "optionals as null",
            (type_, mutated(type_, lambda d, n=nulls: d["payload"].update(n)), True),
        )
        required = {f.name for f in fields if f.required}
        minimal = {k: v for k, v in VALID_PAYLOADS[type_].items() if k in required}
        yield "required fields only", (type_, envelope(type_, minimal), True)
        yield "unknown payload field", (type_, mutated(type_, set_payload("colour", "red")), False)
        yield "payload not an object", (type_, mutated(type_, set_envelope("payload", [])), False)
        for field in fields:
            if field.required:
                yield f"no {field.name}", (type_, mutated(type_, delete(field.name)), False)
                yield (
                    f"null {field.name}",
                    (type_, mutated(type_, set_payload(field.name, None)), False),
                )
            for what, value, ok in field_mutations(field):
                data = mutated(type_, set_payload(field.name, value))
                yield f"{what} {field.name}={value!r}", (type_, data, ok)


def item_samples() -> Iterator[tuple[str, Sample]]:
    type_ = "purchase.made"
    yield "no items", (type_, mutated(type_, set_payload("items", [])), False)
    yield "items not a list", (type_, mutated(type_, set_payload("items", {"sku": "A"})), False)
    yield "item not an object", (type_, mutated(type_, set_payload("items", ["ENG-1"])), False)
    yield "item quantity 0", (type_, mutated(type_, set_item(1, "quantity", 0)), False)
    yield "item unit_price number", (type_, mutated(type_, set_item(1, "unit_price", 14.95)), False)
    yield "item unit_price zero", (type_, mutated(type_, set_item(1, "unit_price", "0")), True)
    yield "item unknown field", (type_, mutated(type_, set_item(0, "colour", "brass")), False)
    yield "item name null", (type_, mutated(type_, set_item(0, "name", None)), True)
    yield (
        "item without sku",
        (type_, mutated(type_, lambda d: d["payload"]["items"][1].pop("sku")), False),
    )


def envelope_samples() -> Iterator[tuple[str, Sample]]:
    type_ = "purchase.made"
    for name in [
        "event_id",
        "type",
        "schema_version",
        "customer_id",
        "occurred_at",
        "source",
        "payload",
    ]:
        yield f"no {name}", (type_, mutated(type_, delete(name, in_payload=False)), False)
        yield f"null {name}", (type_, mutated(type_, set_envelope(name, None)), False)
    cases: list[tuple[str, Any, bool | None]] = [
        ("priority", "high", False),  # unknown envelope field
        ("type", "purchase.teleported", False),
        ("type", "purchase.refunded", False),
        ("schema_version", 2, False),
        ("schema_version", 0, False),
        ("schema_version", True, False),
        ("schema_version", "1", False),
        ("event_id", "3F1C9A52-8D7E-4B6A-9C1D-2E5F7A8B9C0D", True),
        ("event_id", "not-a-uuid", False),
        ("event_id", "3f1c9a528d7e4b6a9c1d2e5f7a8b9c0d", False),
        ("event_id", "{3f1c9a52-8d7e-4b6a-9c1d-2e5f7a8b9c0d}", False),
        ("event_id", "urn:uuid:3f1c9a52-8d7e-4b6a-9c1d-2e5f7a8b9c0d", False),
        ("customer_id", "x" * 64, True),
        ("customer_id", "x" * 65, False),
        ("customer_id", "C 42", False),
        ("customer_id", "kunde-ü", False),
        ("customer_id", "", False),
        ("occurred_at", "2026-01-05T10:15:30Z", True),
        ("occurred_at", "2026-01-05T10:15:30.123456789-03:30", True),
        ("occurred_at", "2026-01-05t10:15:30Z", True),
        ("occurred_at", "2026-01-05T10:15:30z", True),  # RFC 3339 5.6: "z" may be lower case
        ("occurred_at", "2026-01-05 10:15:30Z", False),  # the ABNF of RFC 3339 wants "T"
        ("occurred_at", "2026-01-05T10:15:30", False),
        ("occurred_at", "2026-02-30T10:15:30Z", False),
        ("occurred_at", "2026-01-05T24:15:30Z", False),
        ("occurred_at", "2026-01-05", False),
        ("source", "s" * 64, True),
        ("source", "s" * 65, False),
        ("source", "", False),
        ("source", "   ", False),
        ("correlation_id", None, True),
        ("correlation_id", "req-17", True),
        ("correlation_id", "", False),
        ("correlation_id", "   ", False),
        ("correlation_id", "c" * 201, False),
    ]
    for name, value, ok in cases:
        yield f"{name}={value!r}", (type_, mutated(type_, set_envelope(name, value)), ok)


SAMPLES = [
    pytest.param(*sample, id=f"{sample[0]}: {label}"[:120])
    for label, sample in [*payload_samples(), *item_samples(), *envelope_samples()]
]


def test_the_samples_include_accepted_and_rejected_messages_of_every_type() -> None:
    verdicts = {(p.values[0], p.values[2]) for p in SAMPLES}

    for type_ in VALID_PAYLOADS:
        assert (type_, True) in verdicts
        assert (type_, False) in verdicts


@pytest.mark.parametrize(("type_", "data", "expected"), SAMPLES)
def test_the_json_schema_accepts_exactly_what_validate_envelope_accepts(
    type_: str, data: dict[str, Any], expected: bool | None
) -> None:
    by_validator = accepted_by_validator(data)
    by_schema = accepted_by_schema(type_, data)

    assert by_validator == by_schema, (
        f"validate_envelope {'accepts' if by_validator else 'rejects'} it, "
        f"the JSON Schema {'accepts' if by_schema else 'rejects'} it"
    )
    if expected is not None:
        assert by_validator is expected


@pytest.mark.parametrize(
    ("type_", "data"),
    [
        ("purchase.made", mutated("purchase.made", set_envelope("schema_version", 1.0))),
        ("call.logged", mutated("call.logged", set_payload("duration_seconds", 5.0))),
    ],
)
def test_integers_written_with_a_fraction_are_rejected_where_json_schema_cannot_tell(
    type_: str, data: dict[str, Any]
) -> None:
    # The documented difference (README, "Wire contract"): JSON Schema counts 1.0 as the
    # integer 1; the validator wants integers written as integers.
    assert accepted_by_schema(type_, data)
    assert not accepted_by_validator(data)
