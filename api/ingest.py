"""HTTP ingest rules: a request body of one envelope or a list of envelopes becomes Kafka
records for crm.touchpoints, all of them or none."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from events.codec import encode
from events.envelope import new_event_id, validate_envelope
from events.errors import ErrorCode, InvalidEvent

MAX_EVENTS = 1000


@dataclass(frozen=True, slots=True)
class Record:
    """One validated event as it goes to Kafka: key = customer_id, value = the encoded envelope."""

    event_id: str
    key: bytes
    value: bytes


class RejectedBatch(Exception):
    """Nothing of the request is accepted. `errors` holds one entry per bad event (with its
    `index` in the request), or a single entry without index when the whole body is at fault."""

    def __init__(self, detail: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors

    @classmethod
    def of_body(cls, code: ErrorCode, message: str) -> RejectedBatch:
        return cls(message, [{"code": code, "field": "", "message": message}])


def parse_batch(body: bytes, max_event_bytes: int) -> list[Record]:
    """The records of a request body, in request order; raise RejectedBatch listing every
    invalid event (the first error of each) if any is invalid."""
    items = _items(body)
    records: list[Record] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            records.append(_record(item, max_event_bytes))
        except InvalidEvent as error:
            errors.append({"index": index, **error.as_dict()})
    if errors:
        detail = f"{len(errors)} of {len(items)} events are invalid; nothing was accepted"
        raise RejectedBatch(detail, errors)
    return records


def _items(body: bytes) -> list[Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise RejectedBatch.of_body(
            "invalid_json", f"request body is not valid UTF-8 JSON: {error}"
        ) from None
    if not isinstance(data, list):
        return [data]
    if not data:
        raise RejectedBatch.of_body("schema_violation", "expected 1 or more events, got none")
    if len(data) > MAX_EVENTS:
        raise RejectedBatch.of_body(
            "size_violation", f"expected at most {MAX_EVENTS} events per request, got {len(data)}"
        )
    return data


def _record(item: Any, max_event_bytes: int) -> Record:
    if isinstance(item, dict) and item.get("event_id") is None:
        item = {**item, "event_id": new_event_id()}
    envelope = validate_envelope(item)
    value = encode(envelope)
    if len(value) > max_event_bytes:
        raise InvalidEvent(
            "size_violation", "", f"event is {len(value)} bytes, the limit is {max_event_bytes}"
        )
    return Record(envelope.event_id, envelope.customer_id.encode(), value)
