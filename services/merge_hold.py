"""Merges that wait for their target (services/recorder.py).

A `customer.merged` event names the customer it merges into, whose events travel on another
partition of crm.touchpoints. When the recorder has read that partition less far, the target's
first event, though sent before the merge, is not recorded yet, and the merge would be refused
as `unknown_customer`. So the recorder holds such a merge back: it records the merge's partition
only up to it and reads it again a moment later, for at most `wait` seconds after it first met
it. The merge is refused at the end of the wait, or sooner, once every other partition the
recorder reads has been recorded past the time the merge was sent, or to its end (the target's
first event, sent before, would have been recorded). Only the merge's partition waits, and
nothing is held in memory that a crash could lose: the intake position stays at the merge.

The decisions are here, apart from the consumer: `cuts` says where to stop each partition,
`waiting` which partitions not to read yet, `observe` learns how far the recorder has read.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

RECHECK_SECONDS = 0.25
"""How long a partition held at a merge is not read before the merge is checked again."""


@dataclass
class MergeHold:
    """Which merges with an unknown target may still wait, given how far each partition has
    been read. Times are monotonic seconds; record timestamps are Kafka's, in milliseconds."""

    wait: float
    _held: dict[TopicPartition, tuple[int, float, float]] = field(default_factory=dict)
    """Per partition, the offset of the merge held at its head, when it was first met and when
    to check it again."""
    _read_until: dict[TopicPartition, int] = field(default_factory=dict)
    """Per partition, the time up to which its records are recorded: the newest timestamp of
    a record recorded from it, or of the merge held at its head."""

    def cuts(
        self,
        unknown: Iterable[ConsumerRecord],
        assigned: Collection[TopicPartition],
        at_end: Collection[TopicPartition],
        now: float,
    ) -> dict[TopicPartition, int]:
        """For the records of merges whose target is unknown, in batch order: the offset to
        record each partition up to (excluded), at its first merge that may still wait. The
        partitions read here are `assigned`; `at_end` are those recorded to their end."""
        cuts: dict[TopicPartition, int] = {}
        for record in unknown:
            tp = TopicPartition(record.topic, record.partition)
            if tp in cuts:
                continue
            held = self._held.get(tp)
            since = held[1] if held is not None and held[0] == record.offset else now
            if now - since < self.wait and not self._read_past(record, tp, assigned, at_end):
                cuts[tp] = record.offset
                self._held[tp] = (record.offset, since, now + RECHECK_SECONDS)
                # what its partition holds from before the merge is recorded: two partitions
                # held at once do not wait for each other, the earlier merge is let go
                self._read_until[tp] = max(self._read_until.get(tp, -1), record.timestamp)
        return cuts

    def waiting(self, now: float) -> dict[TopicPartition, int]:
        """The partitions not to read yet from the offset of their held merge on."""
        held = list(self._held.items())  # a copy: a revocation may forget one meanwhile
        return {tp: offset for tp, (offset, _, check_at) in held if check_at > now}

    def observe(self, recorded: Iterable[ConsumerRecord]) -> None:
        """Learn from the records just recorded (or dead-lettered) how far each partition has
        been read; a merge read past has stopped waiting."""
        for record in recorded:
            tp = TopicPartition(record.topic, record.partition)
            if record.timestamp > self._read_until.get(tp, -1):
                self._read_until[tp] = record.timestamp
            held = self._held.get(tp)
            if held is not None and record.offset >= held[0]:
                del self._held[tp]

    def forget(self, tp: TopicPartition) -> None:
        """A partition no longer read here (revoked)."""
        self._held.pop(tp, None)
        self._read_until.pop(tp, None)

    def _read_past(
        self,
        record: ConsumerRecord,
        tp: TopicPartition,
        assigned: Collection[TopicPartition],
        at_end: Collection[TopicPartition],
    ) -> bool:
        def past(other: TopicPartition) -> bool:
            # a record without a timestamp (-1) is read past by partitions at their end only
            return other in at_end or 0 <= record.timestamp <= self._read_until.get(other, -1)

        return all(past(other) for other in assigned if other != tp)
