"""Keep kafka-python clients from creating topics by asking about them.

The embedded broker creates any topic a client names in a metadata request, with 4 partitions,
whatever `allow_auto_create_topics` says. A topic must have the platform's partition count (it
decides each customer's partition), so our clients only ever ask for the metadata of all topics:
a missing topic then stays missing until `crm up` creates it.
"""

from __future__ import annotations

import re

from kafka import KafkaProducer


def all_topics_metadata(producer: KafkaProducer) -> KafkaProducer:
    """Make `producer` request metadata for all topics, never for a named one."""
    producer._metadata.need_all_topic_metadata = True
    return producer


def exact(topic: str) -> str:
    """A subscription pattern matching only `topic` (pattern subscriptions ask for all topics)."""
    return f"^{re.escape(topic)}$"
