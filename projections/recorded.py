"""A recorded event as carried on crm.events: the envelope plus its global position in the event
store and its version in the customer's stream."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from events.catalog import CATALOG, Catalog
from events.envelope import Envelope, validate_envelope
from events.errors import InvalidEvent
from events.fields import kind_of

_COUNTERS = ("position", "version")


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An accepted event: `position` grows across all customers, `version` is 1, 2, 3... within
    one customer. The envelope's payload is at the current schema version of its type."""

    position: int
    version: int
    envelope: Envelope


class VersionGap(Exception):
    """An event skips versions: apply versions `expected` to `got - 1` of the customer first."""

    def __init__(self, customer_id: str, expected: int, got: int) -> None:
        super().__init__(f"customer {customer_id}: expected version {expected}, got {got}")
        self.customer_id = customer_id
        self.expected = expected
        self.got = got


def is_next(customer_id: str, version: int, event: RecordedEvent) -> bool:
    """Whether `event` is the next one for a state of `customer_id` at `version`: False if it is
    already applied; ValueError for another customer, VersionGap if versions are missing."""
    envelope = event.envelope
    if envelope.customer_id != customer_id:
        raise ValueError(
            f"event {envelope.event_id} is for customer {envelope.customer_id!r}, "
            f"the state of {customer_id!r}"
        )
    if event.version <= version:
        return False
    if event.version > version + 1:
        raise VersionGap(customer_id, version + 1, event.version)
    return True


def rfc3339(moment: datetime) -> str:
    """An aware datetime as RFC 3339 in UTC with a "Z" suffix, the one time format of the views."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def from_wire(data: Any, catalog: Catalog = CATALOG) -> RecordedEvent:
    """Validate a decoded crm.events message and upcast its payload; raise InvalidEvent."""
    if not isinstance(data, dict):
        raise InvalidEvent("schema_violation", "", f"expected a JSON object, got {kind_of(data)}")
    position, version = (_counter(data, name) for name in _COUNTERS)
    envelope = validate_envelope({k: v for k, v in data.items() if k not in _COUNTERS}, catalog)
    return RecordedEvent(position, version, envelope.upcast(catalog))


def to_wire(event: RecordedEvent) -> dict[str, Any]:
    """The JSON-ready message: the envelope's fields plus "position" and "version"."""
    data = event.envelope.to_dict()
    data["occurred_at"] = rfc3339(event.envelope.occurred_at)
    return data | {"position": event.position, "version": event.version}


def decode_recorded(raw: bytes, catalog: Catalog = CATALOG) -> RecordedEvent:
    """Parse one crm.events message value; raise InvalidEvent."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidEvent("invalid_json", "", f"not valid UTF-8 JSON: {error}") from None
    return from_wire(data, catalog)


def from_store(state: bytes, *, position: int, version: int) -> RecordedEvent:
    """An event as the event store keeps it (the envelope as written), upcast."""
    envelope = validate_envelope(orjson.loads(state)).upcast()
    return RecordedEvent(position=position, version=version, envelope=envelope)


def encode_recorded(event: RecordedEvent) -> bytes:
    return orjson.dumps(to_wire(event))


def _counter(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidEvent("schema_violation", name, f"expected an integer >= 1, got {value!r}")
    return value
