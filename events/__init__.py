"""The wire contract and the producer SDK, what departments install (kafka-python, orjson)."""

from events.catalog import CATALOG, Catalog, EventSchema
from events.envelope import Envelope, validate_envelope
from events.errors import InvalidEvent
from events.producer import EventDropped, Item, ProducerStats, TouchpointProducer

__all__ = [
    "CATALOG",
    "Catalog",
    "Envelope",
    "EventDropped",
    "EventSchema",
    "InvalidEvent",
    "Item",
    "ProducerStats",
    "TouchpointProducer",
    "validate_envelope",
]
