"""Recorder: reads crm.touchpoints, dead-letters what breaks the wire contract and complaint
events their case cannot take, and appends the rest, deduplicated by event id, to the customers'
streams in the event store.

Exactly-once effect: the Kafka intake position of every batch is tracked in the same PostgreSQL
transaction as its events, per incarnation of the topic (its topic id), and the recorder seeks to
it when it gets a partition. Kafka's committed offsets are only a hint; duplicates that slip
through (a producer's resend, a broker restarted empty) are dropped by event id.

Complaint cases: the state of every case is kept in crm_complaint_cases (infra/case_ledger.py),
written in the transaction of the events that changed it. A batch's new complaint events are
checked in stream order against those states; the refused ones are dead-lettered (code
invalid_transition) and acknowledged before the rest is recorded, so a crash in between only
dead-letters them again.

Customer merges: every accepted merge is kept in crm_customer_merges (infra/merge_ledger.py),
written in the transaction of its event. A batch's new customer.merged events are checked in
order against the merges recorded and those before them in the batch (projections.merges); the
refused ones are dead-lettered the same way, with the rule's code (merge_into_self,
already_merged, ...). Both checks are in services/intake_guards.py. A merge into a customer not
recorded yet waits a few seconds for it (its first event may be on a partition read less far):
services/merge_hold.py.

Run it with `python -m services.recorder` (the `crm up` supervisor does).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError

from events import topics
from events.codec import decode
from events.envelope import Envelope
from events.errors import InvalidEvent
from events.metadata import all_topics_metadata, exact
from infra.case_ledger import CaseConflict, CaseWrites, ComplaintState
from infra.eventstore import EventStore, IntakePosition, RecordOutcome
from infra.logs import configure_logging
from infra.merge_ledger import MergeConflict, MergeState, MergeWrites
from infra.settings import Settings
from projections.complaints import COMPLAINT_TYPES, SlaPolicy, case_key
from projections.merges import CUSTOMER_MERGED, merge_customers
from services.intake_guards import (
    DEFAULT_SLA,
    Rejection,
    backfill_cases,
    backfill_merges,
    guard_complaints,
    guard_merges,
)
from services.merge_hold import MergeHold

log = logging.getLogger("crm.recorder")

_RETRY_SECONDS = 1.0
_DEADLETTER_ACK_TIMEOUT = 30.0
_CASE_CHECKS = 5
"""Checks of one batch against the complaint cases and merges before giving up (loudly) on
conflicts."""


class Triaged(NamedTuple):
    """Valid envelopes in order, `sources[i]` the record of `envelopes[i]`; and rejections."""

    envelopes: list[Envelope]
    sources: list[ConsumerRecord]
    rejected: list[Rejection]


def triage(records: Iterable[ConsumerRecord], max_event_bytes: int) -> Triaged:
    """Split consumed records into valid envelopes (in order) and rejections with reasons."""
    triaged = Triaged([], [], [])
    for record in records:
        try:
            triaged.envelopes.append(decode(record.value or b"", max_bytes=max_event_bytes))
        except InvalidEvent as error:
            triaged.rejected.append(Rejection(record, error))
        else:
            triaged.sources.append(record)
    return triaged


def deadletter_headers(rejection: Rejection) -> list[tuple[str, bytes]]:
    record, error = rejection.record, rejection.error
    reason = f"{error.field}: {error.message}" if error.field else error.message
    return [
        *(record.headers or []),
        ("crm.error.code", error.code.encode()),
        ("crm.error.message", reason.encode()),
        ("crm.source.topic", record.topic.encode()),
        ("crm.source.partition", str(record.partition).encode()),
        ("crm.source.offset", str(record.offset).encode()),
    ]


class Recorder(ConsumerRebalanceListener):
    """The consume → validate → record loop. Dependencies are passed in (see `main`)."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        store: EventStore,
        *,
        max_event_bytes: int,
        batch_size: int,
        sla: SlaPolicy = DEFAULT_SLA,
        merge_wait: float = 0.0,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.store = store
        self.max_event_bytes = max_event_bytes
        self.batch_size = batch_size
        self.sla = sla
        self.merge_hold = MergeHold(merge_wait)
        # Next offset to read per partition, with the topic id it belongs to.
        self._next: dict[TopicPartition, tuple[str | None, int]] = {}
        self._assigned: set[TopicPartition] = set()
        self._lock = threading.Lock()

    def run(self, stop: threading.Event) -> None:
        self.consumer.subscribe(pattern=exact(topics.TOUCHPOINTS), listener=self)
        log.info("event=started topic=%s", topics.TOUCHPOINTS)
        while not stop.is_set():
            self.turn()
        log.info("event=stopped")

    def turn(self) -> None:
        """One poll of the consumer, and the processing of what it returned."""
        polled = self.consumer.poll(timeout_ms=200, max_records=self.batch_size)
        self._resume(polled)
        records = self._skip_held([r for batch in polled.values() for r in batch])
        if records:
            self.process(records)
            self.consumer.commit_async()

    def process(self, records: Sequence[ConsumerRecord]) -> None:
        """Dead-letter the invalid records, then record the valid ones and the positions."""
        triaged = triage(records, self.max_event_bytes)
        cuts = self._hold_merges(triaged.envelopes, triaged.sources)
        if cuts:
            records, triaged = _before(cuts, records, triaged)
        accepted, sources, rejected = triaged
        if rejected:
            self._deadletter(rejected)
        positions = self._positions(records)
        outcome, refused = self._record(accepted, sources, positions)
        self.merge_hold.observe(records)
        for position in positions:
            tp = TopicPartition(position.topic, position.partition)
            self._next[tp] = (position.topic_id, position.next_offset)
        log.info(
            "event=batch_recorded records=%d recorded=%d duplicates=%d deadlettered=%d",
            len(records),
            outcome.recorded,
            outcome.duplicates,
            len(rejected) + refused,
        )

    def _record(
        self,
        envelopes: list[Envelope],
        sources: list[ConsumerRecord],
        positions: list[IntakePosition],
    ) -> tuple[RecordOutcome, int]:
        """Record the envelopes and positions; the outcome, and how many complaint and merge
        events were dead-lettered instead. Those are dead-lettered (and acked) before the rest
        is recorded: a crash in between dead-letters them again, never loses one. When a case
        or a merge moved on between the check and the commit (CaseConflict, MergeConflict:
        nothing was recorded), check again."""
        complaints = any(e.type in COMPLAINT_TYPES for e in envelopes)
        merges = any(e.type == CUSTOMER_MERGED for e in envelopes)
        if not complaints and not merges:
            return self.store.record(envelopes, positions), 0  # no query more than before
        refused = 0
        for attempt in range(1, _CASE_CHECKS + 1):
            cases: CaseWrites | None = None
            merge_writes: MergeWrites | None = None
            if complaints:
                guard = guard_complaints(
                    envelopes, sources, self._complaint_state(envelopes), self.sla
                )
                refused += self._refuse(guard.refused)
                envelopes, sources = _without(envelopes, sources, guard.refused_ids)
                cases = guard.cases
            if merges:
                merge_guard = guard_merges(envelopes, sources, self._merge_state(envelopes))
                refused += self._refuse(merge_guard.refused)
                envelopes, sources = _without(envelopes, sources, merge_guard.refused_ids)
                merge_writes = merge_guard.merges
            try:
                return self.store.record(envelopes, positions, cases, merge_writes), refused
            except CaseConflict as error:
                log.warning(
                    "event=complaint_case_conflict attempt=%d error=%r", attempt, str(error)
                )
            except MergeConflict as error:
                log.warning(
                    "event=customer_merge_conflict attempt=%d error=%r", attempt, str(error)
                )
        raise RuntimeError(
            f"expected the complaint cases and merges of a batch to hold still for one of "
            f"{_CASE_CHECKS} checks, they changed under each: is another recorder writing these "
            "customers?"
        )

    def _hold_merges(
        self, envelopes: list[Envelope], sources: list[ConsumerRecord]
    ) -> dict[TopicPartition, int]:
        """Where to stop the partitions of merges that wait for their target (MergeHold): each
        is sought back to its merge and not read for a moment."""
        if self.merge_hold.wait <= 0 or not any(e.type == CUSTOMER_MERGED for e in envelopes):
            return {}
        guard = guard_merges(envelopes, sources, self._merge_state(envelopes))
        unknown = [r.record for r in guard.refused if r.error.code == "unknown_customer"]
        if not unknown:
            return {}
        assigned = self.consumer.assignment()
        cuts = self.merge_hold.cuts(unknown, assigned, self._at_end(assigned), time.monotonic())
        for tp, offset in cuts.items():
            self.consumer.seek(tp, offset)
            log.info("event=merge_held partition=%d offset=%d", tp.partition, offset)
        return cuts

    def _at_end(self, assigned: Iterable[TopicPartition]) -> set[TopicPartition]:
        """The partitions recorded up to their high watermark (as of the last fetch)."""
        at_end = set()
        for tp in assigned:
            end = self.consumer.highwater(tp)
            if end is not None and tp in self._next and self._next[tp][1] >= end:
                at_end.add(tp)
        return at_end

    def _skip_held(self, records: list[ConsumerRecord]) -> list[ConsumerRecord]:
        """The records to process: not those of a partition held at a merge, from the merge on,
        until it is time to check the merge again (the partition is sought back to it). Not
        paused instead: kafka-python 3.0.12 can leave a paused partition unfetched after it is
        resumed."""
        waiting = self.merge_hold.waiting(time.monotonic())
        if not waiting:
            return records
        kept, skipped = [], set()
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            if tp in waiting and record.offset >= waiting[tp]:
                skipped.add(tp)
            else:
                kept.append(record)
        for tp in skipped:
            self.consumer.seek(tp, waiting[tp])
        return kept

    def _refuse(self, rejected: Sequence[Rejection]) -> int:
        """Dead-letter refused events (waiting for the acks); how many there were."""
        if rejected:
            self._deadletter(rejected)
        return len(rejected)

    def _complaint_state(self, envelopes: Sequence[Envelope]) -> ComplaintState:
        complaints = [e for e in envelopes if e.type in COMPLAINT_TYPES]
        keys = {case_key(e) for e in complaints}
        return self.store.complaint_state([e.event_id for e in complaints], keys)

    def _merge_state(self, envelopes: Sequence[Envelope]) -> MergeState:
        merges = [e for e in envelopes if e.type == CUSTOMER_MERGED]
        return self.store.merge_state([e.event_id for e in merges], merge_customers(merges))

    # ConsumerRebalanceListener: called on kafka-python's IO thread, which must not block, so
    # the seeks to the tracked positions happen on the next turn of the loop (`_resume`).
    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        for tp in revoked:
            self._next.pop(tp, None)
            self.merge_hold.forget(tp)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        with self._lock:
            self._assigned.update(assigned)

    def _resume(self, polled: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Seek newly assigned partitions to their tracked intake position; drop what the poll
        returned for them (it is read again from the right place)."""
        with self._lock:
            assigned, self._assigned = self._assigned, set()
        if not assigned:
            return
        for tp in assigned:
            topic_id = self._topic_id(tp.topic)
            tracked = None if topic_id is None else self.store.intake_offset(*_key(tp, topic_id))
            # Not compared with the end offset: the embedded broker under-reports it. A tracked
            # offset past the real end (an emptied topic that kept its id) is out of range, and
            # the consumer starts from the earliest; what it re-reads is dropped by event id.
            dropped = polled.pop(tp, [])
            if tracked is not None:
                self.consumer.seek(tp, tracked)
            elif dropped:
                self.consumer.seek(tp, dropped[0].offset)
            self._next[tp] = (topic_id, tracked or 0)
            log.info(
                "event=partition_assigned partition=%d topic_id=%s resume_at=%s",
                tp.partition,
                topic_id,
                tracked if tracked is not None else "committed-or-earliest",
            )

    def _positions(self, records: Sequence[ConsumerRecord]) -> list[IntakePosition]:
        last: dict[TopicPartition, int] = {}
        for record in records:
            last[TopicPartition(record.topic, record.partition)] = record.offset
        positions = []
        for tp, offset in last.items():
            topic_id, tracked = self._next.get(tp, (None, 0))
            # Track only forward moves of a known incarnation; re-read records (after a lost
            # commit or a broker restart) are deduplicated by event id alone.
            if topic_id is not None and offset + 1 > tracked:
                positions.append(IntakePosition(tp.topic, topic_id, tp.partition, offset + 1))
        return positions

    def _topic_id(self, topic: str) -> str | None:
        # kafka-python keeps the topic ids of its metadata on the client's cluster object.
        topic_id = self.consumer._client.cluster.topic_id(topic)
        return None if topic_id is None else str(topic_id)

    def _deadletter(self, rejected: Sequence[Rejection]) -> None:
        """Produce every rejection and wait for the broker's acks before going on."""
        while True:
            try:
                futures = [
                    self.producer.send(
                        topics.DEADLETTER,
                        key=r.record.key,
                        value=r.record.value,
                        headers=deadletter_headers(r),
                    )
                    for r in rejected
                ]
                for future in futures:
                    future.get(timeout=_DEADLETTER_ACK_TIMEOUT)
            except KafkaError as error:
                log.warning("event=deadletter_retry error=%r", error)
                threading.Event().wait(_RETRY_SECONDS)
                continue
            for r in rejected:
                log.info(
                    "event=deadlettered code=%s partition=%d offset=%d",
                    r.error.code,
                    r.record.partition,
                    r.record.offset,
                )
            return


def _key(tp: TopicPartition, topic_id: str) -> tuple[str, str, int]:
    return tp.topic, topic_id, tp.partition


def _without(
    envelopes: list[Envelope], sources: list[ConsumerRecord], event_ids: frozenset[str]
) -> tuple[list[Envelope], list[ConsumerRecord]]:
    """The envelopes (and their records) whose event id is not in `event_ids`."""
    kept = [i for i, e in enumerate(envelopes) if e.event_id not in event_ids]
    return [envelopes[i] for i in kept], [sources[i] for i in kept]


def _before(
    cuts: dict[TopicPartition, int], records: Sequence[ConsumerRecord], triaged: Triaged
) -> tuple[list[ConsumerRecord], Triaged]:
    """The part of a batch before the cuts (per partition, the offset to stop at)."""

    def kept(record: ConsumerRecord) -> bool:
        cut = cuts.get(TopicPartition(record.topic, record.partition))
        return cut is None or record.offset < cut

    pairs = [(e, r) for e, r in zip(triaged.envelopes, triaged.sources, strict=True) if kept(r)]
    return [r for r in records if kept(r)], Triaged(
        [e for e, _ in pairs],
        [r for _, r in pairs],
        [r for r in triaged.rejected if kept(r.record)],
    )


def main() -> None:
    """Composition root: wire settings, Kafka and PostgreSQL into a Recorder and run it."""
    settings = Settings()
    configure_logging("recorder")
    store = EventStore(settings.dsn)
    store.create_tables()
    backfilled = store.create_complaint_cases(COMPLAINT_TYPES, backfill_cases)
    if backfilled is not None:
        log.info("event=complaint_cases_created backfilled=%d", backfilled)
    merged = store.create_customer_merges(CUSTOMER_MERGED, backfill_merges)
    if merged is not None:
        log.info("event=customer_merges_created backfilled=%d", merged)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        group_id=settings.recorder_group,
        client_id="crm-recorder",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_poll_records=settings.recorder_batch_size,
        fetch_max_wait_ms=50,  # the embedded broker does not answer a waiting fetch early
        allow_auto_create_topics=False,
    )
    producer = all_topics_metadata(
        KafkaProducer(
            bootstrap_servers=settings.bootstrap,
            client_id="crm-recorder-deadletter",
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            allow_auto_create_topics=False,
        )
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    recorder = Recorder(
        consumer,
        producer,
        store,
        max_event_bytes=settings.max_event_bytes,
        batch_size=settings.recorder_batch_size,
        merge_wait=settings.merge_wait_seconds,
    )
    try:
        recorder.run(stop)
    finally:
        consumer.close(autocommit=False)
        producer.close()
        store.close()


if __name__ == "__main__":
    main()
