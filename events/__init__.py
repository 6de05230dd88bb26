"""The wire contract and the producer SDK, what departments install (kafka-python, orjson)."""

from events.catalog import CATALOG, Catalog, EventSchema
from events.envelope import Envelope, validate_envelope
from events.errors import InvalidEvent

__all__ = ["CATALOG", "Catalog", "Envelope", "EventSchema", "InvalidEvent", "validate_envelope"]
