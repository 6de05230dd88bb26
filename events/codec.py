"""orjson wire format: bytes on Kafka and in the event store <-> Envelope."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson

from events.catalog import CATALOG, Catalog
from events.envelope import Envelope, validate_envelope
from events.errors import InvalidEvent

DEFAULT_MAX_BYTES = 64 * 1024


def encode(envelope: Envelope) -> bytes:
    return orjson.dumps(envelope.to_dict())


def encode_json(value: Any) -> bytes:
    """orjson with Decimal written as a string (money never becomes a float)."""
    return orjson.dumps(value, default=_default)


def decode(
    raw: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, catalog: Catalog = CATALOG
) -> Envelope:
    """Parse and validate one message value; raise InvalidEvent with the dead-letter code."""
    if len(raw) > max_bytes:
        raise InvalidEvent(
            "size_violation", "", f"message is {len(raw)} bytes, the limit is {max_bytes}"
        )
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise InvalidEvent("invalid_json", "", f"not valid UTF-8 JSON: {error}") from None
    return validate_envelope(data, catalog)


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")
