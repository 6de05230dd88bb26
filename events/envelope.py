"""The envelope every touchpoint travels in, and its validation against the catalog."""

from __future__ import annotations

import os
import random
import re
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from events.catalog import CATALOG, Catalog
from events.errors import InvalidEvent
from events.fields import FieldError, kind_of, parse_rfc3339

CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
_CUSTOMER_ID = re.compile(CUSTOMER_ID_PATTERN)
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_UUID = re.compile(UUID_PATTERN)
REQUIRED_FIELDS = (
    "event_id",
    "type",
    "schema_version",
    "customer_id",
    "occurred_at",
    "source",
    "payload",
)
_FIELDS = frozenset({*REQUIRED_FIELDS, "correlation_id"})


@dataclass(frozen=True, slots=True)
class Envelope:
    """A validated touchpoint. `occurred_at` is aware UTC; `payload` holds JSON values as sent
    (money stays a decimal string)."""

    event_id: str
    type: str
    schema_version: int
    customer_id: str
    occurred_at: datetime
    source: str
    payload: dict[str, Any]
    correlation_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The wire form (JSON-ready except `occurred_at`, which orjson writes as RFC 3339)."""
        data: dict[str, Any] = {
            "event_id": self.event_id,
            "type": self.type,
            "schema_version": self.schema_version,
            "customer_id": self.customer_id,
            "occurred_at": self.occurred_at,
            "source": self.source,
            "payload": self.payload,
        }
        if self.correlation_id is not None:
            data["correlation_id"] = self.correlation_id
        return data

    def upcast(self, catalog: Catalog = CATALOG) -> Envelope:
        """This event with its payload brought to the current schema version of its type."""
        current = catalog.current_version(self.type)
        if self.schema_version == current:
            return self
        payload = catalog.upcast(self.type, self.schema_version, self.payload)
        return replace(self, schema_version=current, payload=payload)


def validate_envelope(data: Any, catalog: Catalog = CATALOG) -> Envelope:
    """Check a decoded JSON value against the wire contract and return the Envelope.

    Raises InvalidEvent naming the first field at fault and why.
    """
    if not isinstance(data, dict):
        raise InvalidEvent("schema_violation", "", f"expected a JSON object, got {kind_of(data)}")
    unknown = data.keys() - _FIELDS
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidEvent("schema_violation", name, "unknown envelope field")
    type_ = _required(data, "type")
    if not isinstance(type_, str):
        raise InvalidEvent("schema_violation", "type", f"expected a string, got {kind_of(type_)}")
    catalog.current_version(type_)  # unknown_type before anything else about the payload
    version = _required(data, "schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidEvent("schema_violation", "schema_version", "expected an integer >= 1")
    catalog.schema(type_, version).check(_required(data, "payload"))
    return Envelope(
        event_id=_event_id(_required(data, "event_id")),
        type=type_,
        schema_version=version,
        customer_id=_customer_id(_required(data, "customer_id")),
        occurred_at=_occurred_at(_required(data, "occurred_at")),
        source=_short_text(_required(data, "source"), "source", 64),
        payload=data["payload"],
        correlation_id=_correlation_id(data.get("correlation_id")),
    )


# uuid4() reads os.urandom for every id, a system call that costs more than validating an
# event; a private generator seeded from it (and reseeded in a forked child) is enough for ids.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_event_id() -> str:
    """A random (version 4) UUID for a new event."""
    return str(uuid.UUID(int=_ids.getrandbits(128), version=4))


def _required(data: dict[str, Any], name: str) -> Any:
    value = data.get(name)
    if value is None:
        raise InvalidEvent("schema_violation", name, "is required")
    return value


def _event_id(value: Any) -> str:
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise InvalidEvent(
            "schema_violation", "event_id", f"expected a UUID like {new_event_id()}, got {value!r}"
        )
    return value.lower()


def _customer_id(value: Any) -> str:
    if not isinstance(value, str) or not _CUSTOMER_ID.fullmatch(value):
        raise InvalidEvent(
            "schema_violation",
            "customer_id",
            f"expected 1-64 characters of A-Z a-z 0-9 _ . : -, got {value!r}",
        )
    return value


def _occurred_at(value: Any) -> datetime:
    try:
        return parse_rfc3339(value).astimezone(UTC)
    except FieldError as error:
        raise InvalidEvent("schema_violation", "occurred_at", error.message) from None
    except OverflowError:
        raise InvalidEvent("schema_violation", "occurred_at", f"out of range: {value!r}") from None


def _short_text(value: Any, name: str, max_length: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        raise InvalidEvent(
            "schema_violation", name, f"expected 1-{max_length} characters, got {value!r}"
        )
    return value


def _correlation_id(value: Any) -> str | None:
    return None if value is None else _short_text(value, "correlation_id", 200)
