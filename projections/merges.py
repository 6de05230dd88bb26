"""Merging duplicate customers: the pure rules. Pure: no I/O.

A merge is recorded as a `customer.merged` event on the stream of the customer merged away:

    {"type": "customer.merged", "schema_version": 1, "customer_id": "C-7", ...,
     "payload": {"into_customer_id": "C-2"}}

`into_customer_id` (required, a customer id: 1-64 characters of `A-Z a-z 0-9 _ . : -`) is the
customer that survives. (The event type is not in the catalog yet; this is the payload expected.)

Rules:

- A customer cannot be merged into itself (`merge_into_self`), nor into a customer that was
  itself merged away (`merge_into_merged`: merge into its survivor instead), nor merged a second
  time (`already_merged`), nor, when the caller passes the known customers, into an unknown one
  (`unknown_customer`). A payload without a valid `into_customer_id` is `invalid_payload`.
- These rules keep the merged → into mapping free of cycles, but only if merges are checked one
  after another against every merge accepted before (in the event store's global order, so that
  a rebuild gives the same verdicts): two concurrent merges C-1 → C-2 and C-2 → C-1 checked
  against the same old mapping would both pass. `survivor` therefore detects cycles anyway.
- Chains are allowed and followed: C-1 → C-2 is accepted while C-2 still exists; if C-2 is later
  merged into C-3, C-1's survivor is C-3.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from events.envelope import CUSTOMER_ID_PATTERN, Envelope
from events.errors import ErrorCode

CUSTOMER_MERGED = "customer.merged"
_CUSTOMER_ID = re.compile(CUSTOMER_ID_PATTERN)

MergedInto = Mapping[str, str]
"""Every accepted merge: the id merged away → the id it was merged into (maybe merged since)."""


class MergeError(Exception):
    """A merge rule was broken: `code` for machines (like the dead-letter codes), `message` for
    people, naming what was expected and what came."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class MergeRejected(MergeError):
    """A `customer.merged` event that must not take effect; see the module docstring for codes
    (each one of `events.errors.ErrorCode`, the dead-letter reasons)."""

    code: ErrorCode

    def __init__(
        self, code: ErrorCode, customer_id: str, into_customer_id: str | None, message: str
    ):
        super().__init__(code, message)
        self.customer_id = customer_id
        self.into_customer_id = into_customer_id

    @property
    def field(self) -> str:
        """The field of the event the refusal is about (`""` for an invalid payload: its message
        names the field)."""
        return _MERGE_FIELDS.get(self.code, "payload.into_customer_id")


_MERGE_FIELDS = {"already_merged": "customer_id", "invalid_payload": ""}


class MergeCycle(MergeError):
    """The mapping leads from a customer back to itself: `cycle` lists the ids in order."""

    def __init__(self, cycle: tuple[str, ...]) -> None:
        super().__init__("merge_cycle", "merges form a cycle: " + " -> ".join((*cycle, cycle[0])))
        self.cycle = cycle


@dataclass(frozen=True, slots=True)
class Merge:
    """`customer_id` is merged away into `into_customer_id`."""

    customer_id: str
    into_customer_id: str


def merge_of(customer_id: str, payload: Mapping[str, Any]) -> Merge:
    """The merge a `customer.merged` payload on `customer_id`'s stream asks for; MergeRejected
    (`invalid_payload`) when `into_customer_id` is missing or not a customer id, or the payload
    carries other fields."""
    into = payload.get("into_customer_id")
    if not isinstance(into, str) or not _CUSTOMER_ID.fullmatch(into):
        raise MergeRejected(
            "invalid_payload",
            customer_id,
            None,
            "payload.into_customer_id: expected 1-64 characters of A-Z a-z 0-9 _ . : -, "
            f"got {into!r}",
        )
    unknown = sorted(set(payload) - {"into_customer_id"})
    if unknown:
        raise MergeRejected("invalid_payload", customer_id, into, f"unknown field {unknown[0]!r}")
    return Merge(customer_id, into)


def check_merge(merge: Merge, merged_into: MergedInto, known: Container[str] | None = None) -> None:
    """Raise MergeRejected if `merge` breaks a rule, given every merge accepted before it;
    `known` (optional) holds the ids of the customers that exist."""
    source, target = merge.customer_id, merge.into_customer_id
    if source == target:
        raise MergeRejected(
            "merge_into_self", source, target, f"customer {source} cannot be merged into itself"
        )
    if source in merged_into:
        raise MergeRejected(
            "already_merged",
            source,
            target,
            f"customer {source} was already merged into {merged_into[source]}",
        )
    if target in merged_into:
        raise MergeRejected(
            "merge_into_merged",
            source,
            target,
            f"customer {target} was itself merged away; merge {source} into "
            f"{survivor(target, merged_into)} instead",
        )
    if known is not None and target not in known:
        raise MergeRejected(
            "unknown_customer", source, target, f"no customer {target} to merge {source} into"
        )


def with_merge(
    merged_into: MergedInto, merge: Merge, known: Container[str] | None = None
) -> dict[str, str]:
    """The mapping after `merge` (a new dict; `merged_into` is left as it was); MergeRejected
    if it breaks a rule."""
    check_merge(merge, merged_into, known)
    return {**merged_into, merge.customer_id: merge.into_customer_id}


def survivor(customer_id: str, merged_into: MergedInto) -> str:
    """The customer that `customer_id`'s history lives on: itself if never merged, else the end
    of its chain of merges. MergeCycle if the chain comes back to an id already on it."""
    seen: dict[str, int] = {}
    current = customer_id
    path: list[str] = []
    while current in merged_into:
        if current in seen:
            raise MergeCycle(tuple(path[seen[current] :]))
        seen[current] = len(path)
        path.append(current)
        current = merged_into[current]
    return current


def merged_away(survivor_id: str, merged_into: MergedInto) -> frozenset[str]:
    """Every id whose survivor is `survivor_id` (not including it): the ids whose history and
    identifiers now belong to it."""
    return frozenset(
        merged_id for merged_id in merged_into if survivor(merged_id, merged_into) == survivor_id
    )


# --- intake: a sequence of events checked against the merges before them -------------------


class MergeRefusal(NamedTuple):
    """A merge event the rules refused: its index in the events checked, and why."""

    index: int
    error: MergeRejected


class AcceptedMerge(NamedTuple):
    """A merge event the rules accepted: its index in the events checked, and its merge."""

    index: int
    merge: Merge


@dataclass(frozen=True, slots=True)
class CheckedMerges:
    """What `check_merges` found: the accepted merges and the refused events, each in order."""

    accepted: list[AcceptedMerge]
    refused: list[MergeRefusal]


def check_merges(
    envelopes: Sequence[Envelope],
    merged_into: MergedInto,
    known: Collection[str] | None = None,
    *,
    recorded: Collection[str] = frozenset(),
    earlier_customers_known: bool = False,
) -> CheckedMerges:
    """Take the merge events of `envelopes` in order, each against `merged_into` (the merges
    recorded so far) and the merges accepted before it; a refused one changes nothing. An event
    whose id is in `recorded`, or earlier in `envelopes`, is a resend: skipped. `known`
    (optional) holds the customers that can be merged into; with `earlier_customers_known`, so
    does the customer of every event taken before (not refused), as when they are recorded
    together. Other event types are not checked."""
    merged = dict(merged_into)
    customers = None if known is None else set(known)
    seen = set(recorded)
    accepted: list[AcceptedMerge] = []
    refused: list[MergeRefusal] = []
    for index, envelope in enumerate(envelopes):
        if envelope.event_id in seen:
            continue  # recorded already, or earlier in the events: dropped as a duplicate
        seen.add(envelope.event_id)
        if envelope.type == CUSTOMER_MERGED:
            try:
                merge = merge_of(envelope.customer_id, envelope.payload)
                check_merge(merge, merged, customers)
            except MergeRejected as error:
                refused.append(MergeRefusal(index, error))
                continue  # not recorded: it makes its customer known no more than it merges
            merged[merge.customer_id] = merge.into_customer_id
            accepted.append(AcceptedMerge(index, merge))
        if earlier_customers_known and customers is not None:
            customers.add(envelope.customer_id)
    return CheckedMerges(accepted, refused)


def merge_customers(envelopes: Iterable[Envelope]) -> set[str]:
    """The customers the merge events of `envelopes` are about: merged away and merged into."""
    ids: set[str] = set()
    for e in envelopes:
        if e.type == CUSTOMER_MERGED:
            ids.add(e.customer_id)
            into = e.payload.get("into_customer_id")
            if isinstance(into, str):
                ids.add(into)
    return ids
