"""Field types of the event catalog: one place that both validates values and describes them
as JSON Schema, so the published schemas and the validator cannot drift apart."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from events.currencies import ISO_4217

JsonSchema = dict[str, Any]

MONEY_PATTERN = r"^(0|[1-9][0-9]{0,14})(\.[0-9]{1,4})?$"
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
_MONEY = re.compile(MONEY_PATTERN)
_DATE = re.compile(DATE_PATTERN)
_EMAIL = re.compile(EMAIL_PATTERN)
_RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


class FieldError(ValueError):
    """A value does not fit its field; `path` is relative to the field (`[0].sku`)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def parse_rfc3339(value: Any) -> datetime:
    """Parse an RFC 3339 timestamp that carries an offset; raise FieldError otherwise."""
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise FieldError(f"expected an RFC 3339 timestamp with offset, got {value!r}")
    try:
        return datetime.fromisoformat(value.upper())  # RFC 3339 allows "t" and "z"
    except ValueError:
        raise FieldError(f"not a real date and time: {value!r}") from None


@dataclass(frozen=True, slots=True)
class Field:
    """One payload field: `check` raises FieldError for a bad value; `schema` describes it."""

    name: str
    check: Callable[[Any], None]
    schema: JsonSchema
    required: bool = True

    def optional(self) -> Field:
        return Field(self.name, self.check, self.schema, required=False)


def text(name: str, *, max_length: int = 1000, required: bool = True) -> Field:
    def check(value: Any) -> None:
        if not isinstance(value, str):
            raise FieldError(f"expected a string, got {kind_of(value)}")
        if not value.strip():
            raise FieldError("must not be empty")
        if len(value) > max_length:
            raise FieldError(f"at most {max_length} characters, got {len(value)}")

    schema = {"type": "string", "minLength": 1, "maxLength": max_length, "pattern": r"\S"}
    return Field(name, check, schema, required)


def choice(name: str, *options: str, required: bool = True) -> Field:
    allowed = frozenset(options)

    def check(value: Any) -> None:
        if not isinstance(value, str) or value not in allowed:
            raise FieldError(f"expected one of {', '.join(options)}, got {value!r}")

    return Field(name, check, {"type": "string", "enum": list(options)}, required)


def money(name: str, *, positive: bool = False, required: bool = True) -> Field:
    """A non-negative decimal amount as a string ("129.90"), up to 4 decimals."""

    def check(value: Any) -> None:
        if not isinstance(value, str) or not _MONEY.fullmatch(value):
            raise FieldError(f'expected a decimal string such as "129.90", got {value!r}')
        if positive and not value.strip("0."):
            raise FieldError("must be greater than zero")

    schema: JsonSchema = {"type": "string", "pattern": MONEY_PATTERN}
    if positive:
        schema["not"] = {"pattern": r"^0(\.0+)?$"}
    return Field(name, check, schema, required)


def currency(name: str = "currency") -> Field:
    def check(value: Any) -> None:
        if not isinstance(value, str) or value not in ISO_4217:
            raise FieldError(f"expected an ISO 4217 currency code such as EUR, got {value!r}")

    return Field(name, check, {"type": "string", "enum": sorted(ISO_4217)})


def calendar_date(name: str) -> Field:
    def check(value: Any) -> None:
        if not isinstance(value, str) or not _DATE.fullmatch(value):
            raise FieldError(f"expected a date YYYY-MM-DD, got {value!r}")
        try:
            date.fromisoformat(value)
        except ValueError:
            raise FieldError(f"not a real date: {value!r}") from None

    return Field(name, check, {"type": "string", "format": "date", "pattern": DATE_PATTERN})


def timestamp(name: str) -> Field:
    def check(value: Any) -> None:
        parse_rfc3339(value)

    return Field(name, check, {"type": "string", "format": "date-time"})


def email(name: str, *, required: bool = True) -> Field:
    def check(value: Any) -> None:
        if not isinstance(value, str) or len(value) > 254 or not _EMAIL.fullmatch(value.strip()):
            raise FieldError(f"expected an e-mail address, got {value!r}")

    schema = {"type": "string", "maxLength": 254, "pattern": r"^\s*[^@\s]+@[^@\s]+\.[^@\s]+\s*$"}
    return Field(name, check, schema, required)


def integer(name: str, *, minimum: int = 0) -> Field:
    def check(value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise FieldError(f"expected an integer, got {kind_of(value)}")
        if value < minimum:
            raise FieldError(f"must be >= {minimum}, got {value}")

    return Field(name, check, {"type": "integer", "minimum": minimum})


def boolean(name: str, *, required: bool = True) -> Field:
    def check(value: Any) -> None:
        if not isinstance(value, bool):
            raise FieldError(f"expected true or false, got {kind_of(value)}")

    return Field(name, check, {"type": "boolean"}, required)


def object_list(name: str, *item_fields: Field, max_items: int = 500) -> Field:
    """A non-empty list of objects, each checked against `item_fields`."""

    def check(value: Any) -> None:
        if not isinstance(value, list) or not value:
            raise FieldError("expected a non-empty list")
        if len(value) > max_items:
            raise FieldError(f"at most {max_items} items, got {len(value)}")
        for index, item in enumerate(value):
            try:
                check_object(item, item_fields)
            except FieldError as error:
                raise FieldError(error.message, f"[{index}]{error.path}") from None

    schema = {
        "type": "array",
        "minItems": 1,
        "maxItems": max_items,
        "items": object_schema(item_fields),
    }
    return Field(name, check, schema)


def check_object(value: Any, fields: tuple[Field, ...]) -> None:
    """Check a JSON object against its fields: unknown keys, missing keys and bad values."""
    if not isinstance(value, dict):
        raise FieldError(f"expected an object, got {kind_of(value)}")
    if sum(f.name in value for f in fields) != len(value):  # some key is not a field
        known = {f.name for f in fields}
        unknown = next(key for key in value if key not in known)
        expected = ", ".join(sorted(known))
        raise FieldError(f"unknown field (expected one of {expected})", f".{unknown}")
    for f in fields:
        item = value.get(f.name)
        if item is None:
            if f.required:
                raise FieldError("is required", f".{f.name}")
            continue
        try:
            f.check(item)
        except FieldError as error:
            raise FieldError(error.message, f".{f.name}{error.path}") from None


def object_schema(fields: tuple[Field, ...]) -> JsonSchema:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [f.name for f in fields if f.required],
        "properties": {
            f.name: f.schema if f.required else {"anyOf": [f.schema, {"type": "null"}]}
            for f in fields
        },
    }


def kind_of(value: Any) -> str:
    """The JSON-ish name of a value's type, for error messages."""
    return "null" if value is None else type(value).__name__


__all__ = [
    "Field",
    "FieldError",
    "boolean",
    "calendar_date",
    "check_object",
    "choice",
    "currency",
    "email",
    "integer",
    "kind_of",
    "money",
    "object_list",
    "object_schema",
    "parse_rfc3339",
    "text",
    "timestamp",
]
