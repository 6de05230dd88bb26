"""Tests of the producer SDK's on-disk spool (real files, real processes)."""

import multiprocessing
import os
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.spool import Spool, SpooledRecord, SpoolFull


def rec(i: int, topic: str = "crm.touchpoints") -> SpooledRecord:
    return SpooledRecord(topic, f"k{i}".encode(), f"value-{i}".encode() * 3)


def drain(spool: Spool, batch: int = 7) -> list[SpooledRecord]:
    out: list[SpooledRecord] = []
    while (b := spool.peek_batch(batch)).records:
        out.extend(b.records)
        spool.commit(b)
    return out


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*/*.seg"))


def test_fifo_across_segments_and_files_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=200)
    records = [rec(i) for i in range(50)]
    for r in records[:20]:
        spool.append(r)
    spool.append_many(records[20:])
    assert len(spool) == 50
    assert len(segment_files(tmp_path)) > 5
    assert drain(spool) == records
    assert len(spool) == 0 and spool.pending_bytes == 0
    assert segment_files(tmp_path) == []
    spool.close()
    assert list(tmp_path.iterdir()) == []


def test_key_none_empty_and_oversized_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=64)
    records = [
        SpooledRecord("t", None, b"v"),
        SpooledRecord("t", b"", b""),
        SpooledRecord("tøpic", b"k", b"x" * 1000),  # larger than a segment: gets its own
        SpooledRecord("t", b"\x00", b"\xff"),
    ]
    spool.append_many(records)
    spool.close()
    spool = Spool(tmp_path)
    assert drain(spool) == records
    spool.close()


def test_peek_does_not_remove(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append_many([rec(i) for i in range(5)])
    assert spool.peek_batch(3).records == spool.peek_batch(3).records == tuple(map(rec, range(3)))
    assert spool.peek_batch(100).records == tuple(map(rec, range(5)))
    assert spool.peek_batch(0).records == ()
    assert len(spool) == 5
    spool.close()


def test_commit_removes_only_committed_and_survives_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=150)
    spool.append_many([rec(i) for i in range(20)])
    before = spool.pending_bytes
    spool.commit(spool.peek_batch(8))
    assert len(spool) == 12
    assert 0 < spool.pending_bytes < before
    assert spool.peek_batch(1).records == (rec(8),)
    spool.close()

    reopened = Spool(tmp_path, segment_bytes=150)
    assert len(reopened) == 12
    reopened.commit(reopened.peek_batch(5))
    reopened.close()

    again = Spool(tmp_path)
    assert drain(again) == [rec(i) for i in range(13, 20)]
    again.close()
    assert list(tmp_path.iterdir()) == []


def test_uncommitted_records_survive_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=100)
    spool.append_many([rec(i) for i in range(10)])
    spool.peek_batch(4)  # sent, but never acknowledged
    spool.close()
    reopened = Spool(tmp_path)
    assert len(reopened) == 10
    reopened.append(rec(10))  # own records come after the adopted ones
    assert drain(reopened) == [rec(i) for i in range(11)]
    reopened.close()


@pytest.mark.parametrize("cut", [1, 5, 14, 15, 20])
def test_torn_tail_keeps_earlier_records(tmp_path: Path, cut: int) -> None:
    spool = Spool(tmp_path, segment_bytes=10_000)
    spool.append_many([rec(i) for i in range(10)])
    spool.close()
    (segment,) = segment_files(tmp_path)
    os.truncate(segment, segment.stat().st_size - cut)
    reopened = Spool(tmp_path)
    assert len(reopened) == 9
    assert drain(reopened) == [rec(i) for i in range(9)]
    reopened.close()
    assert list(tmp_path.iterdir()) == []


def test_garbage_tail_of_a_sealed_segment_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=100)
    spool.append_many([rec(i) for i in range(6)])
    spool.close()
    first, *others = segment_files(tmp_path)
    assert others
    with open(first, "ab") as f:  # as left by a failed write before the segment was sealed
        f.write(b"\xff" * 40)  # huge lengths, bad checksum
    reopened = Spool(tmp_path)
    assert drain(reopened) == [rec(i) for i in range(6)]
    reopened.close()
    assert list(tmp_path.iterdir()) == []


def test_spool_full_at_bound_and_append_many_is_all_or_nothing(tmp_path: Path) -> None:
    probe = Spool(tmp_path / "probe")
    probe.append(rec(0))
    size = probe.pending_bytes
    probe.close()

    spool = Spool(tmp_path / "spool", max_bytes=size * 5, segment_bytes=size * 2)
    spool.append_many([rec(i) for i in range(3)])
    full = r"spool .*spool/[0-9]{20}-[0-9a-f]{32} is full: .* of \d+ bytes"
    with pytest.raises(SpoolFull, match=full):
        spool.append_many([rec(i) for i in range(3, 6)])
    assert len(spool) == 3 and spool.pending_bytes == 3 * size
    spool.append_many([rec(3), rec(4)])
    with pytest.raises(SpoolFull):
        spool.append(rec(5))
    spool.commit(spool.peek_batch(1))
    spool.append(rec(5))  # committed bytes no longer count
    assert drain(spool) == [rec(i) for i in range(1, 6)]
    spool.close()


def test_stale_batch_and_prefix(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=100)
    spool.append_many([rec(i) for i in range(6)])
    batch = spool.peek_batch(4)
    spool.commit(batch.prefix(2))  # only two were acknowledged
    with pytest.raises(ValueError, match="stale"):
        spool.commit(batch)
    assert spool.peek_batch(10).records == tuple(map(rec, range(2, 6)))
    spool.close()
    with pytest.raises(ValueError, match="closed"):
        spool.append(rec(0))
    spool.close()  # idempotent


def test_live_owner_is_not_adopted(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    first.append(rec(1))
    second = Spool(tmp_path)
    assert len(second) == 0 and second.peek_batch(10).records == ()
    first.close()
    assert second.peek_batch(10).records == (rec(1),)  # owner gone: adopted
    assert len(Spool(tmp_path)) == 0  # already adopted by the second
    second.close()


def _append_and_die(directory: str, n: int) -> None:
    spool = Spool(directory, segment_bytes=120)
    spool.append_many([rec(i, "dead") for i in range(n)])
    os._exit(0)  # no close, no commit: the process just dies


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_dead_owner_is_adopted(tmp_path: Path, method: str) -> None:
    spool = Spool(tmp_path)
    spool.append(rec(0, "own"))
    child = multiprocessing.get_context(method).Process(target=_append_and_die, args=(tmp_path, 9))
    child.start()
    child.join()
    assert child.exitcode == 0
    assert len(spool) == 1  # adoption happens on peek
    assert drain(spool) == [rec(i, "dead") for i in range(9)] + [rec(0, "own")]
    spool.close()
    assert list(tmp_path.iterdir()) == []


def test_forked_child_does_not_corrupt_parent(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=300)
    spool.append_many([rec(i, "parent") for i in range(10)])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: same Spool object, must use a subdirectory of its own
        code = 1
        try:
            if len(spool) == 0:
                spool.append_many([rec(i, "child") for i in range(30)])
                spool.close()
                code = 0
        finally:
            os.write(write, b"x")
            os._exit(code)
    os.close(write)
    os.read(read, 1)
    os.close(read)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    spool.append_many([rec(i, "parent") for i in range(10, 20)])
    delivered = drain(spool)
    assert [r for r in delivered if r.topic == "parent"] == [rec(i, "parent") for i in range(20)]
    assert [r for r in delivered if r.topic == "child"] == [rec(i, "child") for i in range(30)]
    assert len(delivered) == 50
    spool.close()
    assert list(tmp_path.iterdir()) == []


def test_threads_append_while_drained(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=2_000)
    per_thread, writers = 500, 4
    delivered: list[SpooledRecord] = []
    done = threading.Event()

    def write(t: int) -> None:
        for i in range(per_thread):
            spool.append(rec(i, f"t{t}"))

    def read() -> None:
        while not done.is_set() or len(spool):
            batch = spool.peek_batch(13)
            delivered.extend(batch.records)
            spool.commit(batch)

    threads = [threading.Thread(target=write, args=(t,)) for t in range(writers)]
    drainer = threading.Thread(target=read)
    drainer.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    drainer.join()
    for t in range(writers):
        assert [r for r in delivered if r.topic == f"t{t}"] == [
            rec(i, f"t{t}") for i in range(per_thread)
        ]
    assert len(delivered) == per_thread * writers
    spool.close()


operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 5)),
        st.tuples(st.just("peek"), st.integers(0, 6)),
        st.tuples(st.just("commit"), st.integers(0, 6)),
        st.tuples(st.just("reopen"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(operations)
def test_any_operation_sequence_delivers_everything_in_order(ops: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        spool = Spool(directory, segment_bytes=90)
        pending: list[SpooledRecord] = []
        appended = 0
        for op, n in ops:
            if op == "append":
                new = [rec(appended + i) for i in range(n)]
                spool.append_many(new)
                pending += new
                appended += n
            elif op == "reopen":
                spool.close()
                spool = Spool(directory, segment_bytes=90)
            else:
                batch = spool.peek_batch(n)
                assert list(batch.records) == pending[:n]
                if op == "commit":
                    spool.commit(batch)
                    del pending[:n]
            assert len(spool) == len(pending)
        assert drain(spool) == pending
        spool.close()
        assert os.listdir(directory) == []
