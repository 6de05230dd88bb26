"""Which merges with an unknown target the recorder holds back, and for how long
(services/merge_hold.py)."""

from __future__ import annotations

from kafka import TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from services.merge_hold import RECHECK_SECONDS, MergeHold

TOPIC = "crm.touchpoints"
P0, P1, P2 = (TopicPartition(TOPIC, p) for p in range(3))
ALL = {P0, P1, P2}


def record(partition: int, offset: int, timestamp: int = 1_000) -> ConsumerRecord:
    return ConsumerRecord(TOPIC, partition, None, offset, timestamp, 0, b"k", b"{}", [], None,
                          0, 0, 0)  # fmt: skip


def test_a_merge_waits_until_the_wait_is_over_counted_from_when_it_was_first_met() -> None:
    hold = MergeHold(wait=10.0)
    assert hold.cuts([record(0, 5)], ALL, set(), now=100.0) == {P0: 5}
    assert hold.cuts([record(0, 5)], ALL, set(), now=109.9) == {P0: 5}  # read again: same merge
    assert hold.cuts([record(0, 5)], ALL, set(), now=110.0) == {}


def test_another_merge_at_the_head_of_the_partition_starts_its_own_wait() -> None:
    hold = MergeHold(wait=10.0)
    hold.cuts([record(0, 5)], ALL, set(), now=100.0)
    hold.observe([record(0, 5)])  # refused at last, and read past
    assert hold.cuts([record(0, 9)], ALL, set(), now=112.0) == {P0: 9}


def test_each_partition_stops_at_its_first_waiting_merge() -> None:
    hold = MergeHold(wait=10.0)
    unknown = [record(0, 5), record(1, 3), record(0, 7)]
    assert hold.cuts(unknown, ALL, set(), now=0.0) == {P0: 5, P1: 3}


def test_a_merge_stops_waiting_once_every_other_partition_was_read_past_its_time() -> None:
    hold = MergeHold(wait=10.0)
    hold.observe([record(1, 0, timestamp=2_000), record(2, 0, timestamp=999)])
    assert hold.cuts([record(0, 5, timestamp=1_000)], ALL, set(), now=0.0) == {P0: 5}  # P2 lags
    hold.observe([record(2, 1, timestamp=1_000)])
    assert hold.cuts([record(0, 5, timestamp=1_000)], ALL, set(), now=0.1) == {}


def test_of_two_partitions_held_at_once_the_earlier_merge_is_let_go() -> None:
    hold = MergeHold(wait=10.0)
    hold.observe([record(2, 0, timestamp=9_000)])
    earlier, later = record(0, 5, timestamp=1_000), record(1, 3, timestamp=2_000)
    assert hold.cuts([earlier, later], ALL, set(), now=0.0) == {P0: 5, P1: 3}
    assert hold.cuts([earlier, later], ALL, set(), now=0.3) == {P1: 3}


def test_a_partition_recorded_to_its_end_holds_no_merge_back() -> None:
    hold = MergeHold(wait=10.0)
    hold.observe([record(1, 0, timestamp=5_000)])
    assert hold.cuts([record(0, 5, timestamp=9_000)], ALL, {P2}, now=0.0) == {P0: 5}
    assert hold.cuts([record(0, 5, timestamp=9_000)], ALL, {P1, P2}, now=0.1) == {}


def test_only_the_partitions_read_here_count_and_a_lone_partition_never_waits() -> None:
    hold = MergeHold(wait=10.0)
    hold.observe([record(1, 0, timestamp=5_000)])
    assert hold.cuts([record(0, 5)], {P0, P1}, set(), now=0.0) == {}
    assert hold.cuts([record(0, 6)], {P0}, set(), now=0.0) == {}


def test_a_record_without_a_timestamp_waits_to_the_end() -> None:
    hold = MergeHold(wait=10.0)
    hold.observe([record(1, 0, timestamp=5_000), record(2, 0, timestamp=5_000)])
    assert hold.cuts([record(0, 5, timestamp=-1)], ALL, set(), now=0.0) == {P0: 5}


def test_no_wait_holds_nothing() -> None:
    assert MergeHold(wait=0.0).cuts([record(0, 5)], ALL, set(), now=0.0) == {}


def test_a_revoked_partition_is_forgotten() -> None:
    hold = MergeHold(wait=10.0)
    hold.cuts([record(0, 5)], ALL, set(), now=100.0)
    hold.observe([record(1, 0, timestamp=5_000), record(2, 0, timestamp=5_000)])
    hold.forget(P0)
    hold.forget(P1)
    assert hold.cuts([record(0, 5)], ALL, set(), now=109.0) == {P0: 5}  # P1 unread again
    assert hold.cuts([record(0, 5)], ALL, set(), now=119.0) == {}  # its wait began at 109


def test_a_held_partition_is_not_read_until_its_merge_is_checked_again() -> None:
    hold = MergeHold(wait=10.0)
    hold.cuts([record(0, 5), record(1, 3)], ALL, set(), now=100.0)
    assert hold.waiting(100.1) == {P0: 5, P1: 3}
    assert hold.waiting(100.0 + RECHECK_SECONDS) == {}
    hold.observe([record(1, 3)])  # read past at the check
    hold.cuts([record(0, 5)], ALL, set(), now=100.3)
    assert hold.waiting(100.4) == {P0: 5}
