"""The wire contract, the producer SDK, the alert subscriber and webhook signatures: what
departments install (kafka-python, orjson)."""

from events.alert_subscriber import AlertSubscriber, MalformedAlert, ReceivedAlert
from events.catalog import CATALOG, Catalog, EventSchema
from events.envelope import Envelope, validate_envelope
from events.errors import InvalidEvent
from events.producer import EventDropped, Item, ProducerStats, TouchpointProducer
from events.webhooks import InvalidSignature, verify_request

__all__ = [
    "CATALOG",
    "AlertSubscriber",
    "Catalog",
    "Envelope",
    "EventDropped",
    "EventSchema",
    "InvalidEvent",
    "InvalidSignature",
    "Item",
    "MalformedAlert",
    "ProducerStats",
    "ReceivedAlert",
    "TouchpointProducer",
    "validate_envelope",
    "verify_request",
]
