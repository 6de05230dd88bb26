"""Deterministic demo data: months of realistic touchpoints of a few thousand customers.

`generate` yields wire envelopes in occurred_at order, the way a bulk import of history sends them;
`send_demo` sends them through the producer SDK. The same arguments give the same events, event ids
included: each customer draws from its own `random.Random`, seeded from `random.Random(seed)`, and
runs as a small simulation that yields its events in time order, so customers are generated lazily
and merged by time.

The package holds the shop's `catalog`, the `people` (segments, profiles, names and addresses by
country), one simulated `customer` and the `generator` that runs and merges them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from tqdm import tqdm

from infra.demo.catalog import BUNDLES, PRODUCTS, Bundle, Product
from infra.demo.generator import deserting_customers, generate


class EnvelopeSender(Protocol):
    """What `send_demo` needs of `events.producer.TouchpointProducer`."""

    def send_envelope(self, envelope: Mapping[str, Any]) -> str: ...

    def flush(self, timeout: float | None = None) -> int: ...


def send_demo(
    producer: EnvelopeSender,
    events: Iterable[dict[str, Any]],
    total: int | None,
    progress: bool = True,
) -> int:
    """Send `events` through `producer` with a progress bar, then flush; return how many."""
    sent = 0
    for envelope in tqdm(events, total=total, unit="event", disable=not progress):
        producer.send_envelope(envelope)
        sent += 1
    producer.flush()
    return sent


__all__ = [
    "BUNDLES",
    "PRODUCTS",
    "Bundle",
    "EnvelopeSender",
    "Product",
    "deserting_customers",
    "generate",
    "send_demo",
]
