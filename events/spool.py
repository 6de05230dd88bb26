"""Bounded on-disk spool of the producer SDK: records Kafka could not take yet, kept in FIFO order.

Layout: ``<directory>/<creation time ns>-<uuid hex>/`` is owned by one live ``Spool`` (an exclusive
``flock`` on its ``lock`` file) and holds numbered segment files ``<n>.seg`` plus, once some of a
segment is committed, ``<n>.off`` (committed byte offset, replaced atomically). A segment is a
sequence of records ``crc32 | topic length | key length (-1 = None) | value length | topic | key |
value``; a torn or corrupt record ends the segment. Subdirectories whose lock is free belong to
dead owners and are adopted: their records are delivered before this instance's own.
"""

import fcntl
import os
import re
import struct
import tempfile
import threading
import time
import uuid
import weakref
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

_HEAD = struct.Struct("<IHiI")  # crc32 of the rest, topic length, key length, value length
_LENGTHS = struct.Struct("<HiI")
_LOCK = "lock"
_OWNER_DIR = re.compile(r"[0-9]{20}-[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class SpooledRecord:
    """One message for Kafka, as the producer would have sent it."""

    topic: str
    key: bytes | None
    value: bytes


class SpoolFull(Exception):
    """Raised by ``Spool.append``/``append_many`` when the records would exceed ``max_bytes``."""


@dataclass(eq=False, slots=True)
class _Segment:
    path: Path
    committed: int  # offset of the first record not committed yet
    end: int  # offset after the last valid record
    count: int  # records between committed and end


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    """The oldest pending records, as returned by ``Spool.peek_batch``; pass it to ``commit``."""

    records: tuple[SpooledRecord, ...]
    _positions: tuple[tuple[_Segment, int, int], ...] = field(repr=False)

    def prefix(self, n: int) -> "SpoolBatch":
        """The first ``n`` records only (to commit those acknowledged before a failure)."""
        return SpoolBatch(self.records[:n], self._positions[:n])


def _encode(record: SpooledRecord) -> bytes:
    topic, key = record.topic.encode(), record.key or b""
    klen = -1 if record.key is None else len(key)
    rest = _LENGTHS.pack(len(topic), klen, len(record.value)) + topic + key + record.value
    return struct.pack("<I", zlib.crc32(rest)) + rest


def _records(f: BinaryIO, pos: int, limit: int) -> Iterator[tuple[SpooledRecord, int, int]]:
    """Yield ``(record, start, end)`` from ``pos`` up to ``limit``; stop at a torn/corrupt one."""
    f.seek(pos)
    while pos + _HEAD.size <= limit:
        head = f.read(_HEAD.size)
        crc, tlen, klen, vlen = _HEAD.unpack(head)
        end = pos + _HEAD.size + tlen + max(klen, 0) + vlen
        if klen < -1 or end > limit:
            return
        body = f.read(end - pos - _HEAD.size)
        if zlib.crc32(body, zlib.crc32(head[4:])) != crc:
            return
        key = None if klen < 0 else body[tlen : tlen + klen]
        yield SpooledRecord(body[:tlen].decode(), key, body[tlen + max(klen, 0) :]), pos, end
        pos = end


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_dir(path: Path) -> None:
    for name in os.listdir(path):
        (path / name).unlink()
    path.rmdir()


_LIVE: "weakref.WeakSet[Spool]" = weakref.WeakSet()


class Spool:
    """Thread-safe, bounded FIFO of records on disk, shared safely by processes via one directory.

    ``append`` is durable once it returns (written to the OS; also fsynced with ``fsync=True``).
    ``peek_batch`` returns the oldest records without removing them; ``commit`` removes them.
    Call ``close`` when done: until then this instance's records cannot be adopted by others.
    After ``os.fork`` the child's copy forgets the parent's records and subdirectory (the parent
    keeps delivering them) and spools into a new subdirectory of its own; nothing to call.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_bytes: int = 256 * 1024 * 1024,
        segment_bytes: int = 4 * 1024 * 1024,
        fsync: bool = False,
    ) -> None:
        self._base = Path(directory)
        self._base.mkdir(parents=True, exist_ok=True)
        self._max_bytes, self._segment_bytes, self._fsync = max_bytes, segment_bytes, fsync
        self._closed = False
        self._forget()
        _LIVE.add(self)
        with self._lock:
            self._adopt()

    def _forget(self) -> None:
        """Reset to owning nothing: no records, no subdirectory, no file descriptors."""
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []  # delivery order: adopted ones first
        self._adopted: dict[Path, int] = {}  # adopted subdirectory -> fd holding its lock
        self._dir: Path | None = None  # own subdirectory, created on first append
        self._dir_fd = -1
        self._active: _Segment | None = None  # own segment being appended to
        self._active_fd = -1
        self._next_segment = 0

    def _after_fork_in_child(self) -> None:
        for fd in (self._active_fd, self._dir_fd, *self._adopted.values()):
            if fd >= 0:
                os.close(fd)  # the parent's open file descriptions (and flocks) stay intact
        self._forget()

    def __len__(self) -> int:
        """Number of records not committed yet, adopted ones included."""
        with self._lock:
            return sum(s.count for s in self._segments)

    @property
    def pending_bytes(self) -> int:
        """Bytes on disk of the records not committed yet (the quantity bounded by max_bytes)."""
        with self._lock:
            return self._pending_bytes()

    def _pending_bytes(self) -> int:
        return sum(s.end - s.committed for s in self._segments)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("spool is closed")

    def append(self, record: SpooledRecord) -> None:
        """Spool one record; raise ``SpoolFull`` if it does not fit."""
        self.append_many((record,))

    def append_many(self, records: Sequence[SpooledRecord]) -> None:
        """Spool records in order; raise ``SpoolFull`` (appending none) if they do not all fit."""
        data = [_encode(r) for r in records]
        with self._lock:
            self._check_open()
            pending, need = self._pending_bytes(), sum(map(len, data))
            if pending + need > self._max_bytes:
                where = self._dir or self._base
                raise SpoolFull(
                    f"spool {where} is full: {pending} of {self._max_bytes} bytes pending, "
                    f"{len(data)} record(s) of {need} bytes do not fit"
                )
            for d in data:
                seg = self._active
                if seg is None or (seg.end and seg.end + len(d) > self._segment_bytes):
                    seg = self._new_segment()
                try:
                    view = memoryview(d)
                    while view:
                        view = view[os.write(self._active_fd, view) :]
                    if self._fsync:
                        os.fsync(self._active_fd)
                except OSError:
                    self._seal()  # bytes past seg.end are never read; later appends use a new file
                    raise
                seg.end += len(d)
                seg.count += 1

    def _new_segment(self) -> _Segment:
        self._seal()
        if self._dir is None:
            tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self._base))  # never adopted
            self._dir_fd = os.open(tmp / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._dir_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Named by creation time first, so adopters deliver older spools first.
            self._dir = tmp.rename(self._base / f"{time.time_ns():020d}-{uuid.uuid4().hex}")
            if self._fsync:
                _fsync_dir(self._base)
        path = self._dir / f"{self._next_segment:010d}.seg"
        self._next_segment += 1
        self._active_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        if self._fsync:
            _fsync_dir(self._dir)
        self._active = _Segment(path, 0, 0, 0)
        self._segments.append(self._active)
        return self._active

    def _seal(self) -> None:
        if self._active is not None:
            os.close(self._active_fd)
            self._active, self._active_fd = None, -1

    def peek_batch(self, max_records: int) -> SpoolBatch:
        """Return up to ``max_records`` oldest pending records (adopting dead owners' first)."""
        records: list[SpooledRecord] = []
        positions: list[tuple[_Segment, int, int]] = []
        with self._lock:
            self._check_open()
            self._adopt()
            for seg in self._segments:
                if len(records) >= max_records:
                    break
                with open(seg.path, "rb") as f:
                    for record, start, end in _records(f, seg.committed, seg.end):
                        records.append(record)
                        positions.append((seg, start, end))
                        if len(records) >= max_records:
                            break
        return SpoolBatch(tuple(records), tuple(positions))

    def commit(self, batch: SpoolBatch) -> None:
        """Remove exactly the records of ``batch``; ``ValueError`` if already committed."""
        spans: dict[_Segment, list[int]] = {}  # segment -> [start, end, records]
        for seg, start, end in batch._positions:
            span = spans.setdefault(seg, [start, end, 0])
            span[1] = end
            span[2] += 1
        with self._lock:
            self._check_open()
            if any(s not in self._segments or s.committed != sp[0] for s, sp in spans.items()):
                raise ValueError("stale batch: already committed or not from this spool")
            for seg, (_, end, n) in spans.items():
                seg.committed, seg.count = end, seg.count - n
                if seg.count == 0:
                    self._delete(seg)
                    continue
                off = seg.path.with_suffix(".off")
                tmp = off.with_name(off.name + ".tmp")
                with open(tmp, "w") as f:
                    f.write(str(end))
                    if self._fsync:
                        f.flush()
                        os.fsync(f.fileno())
                os.replace(tmp, off)

    def _delete(self, seg: _Segment) -> None:
        if seg is self._active:
            self._seal()
        self._segments.remove(seg)
        seg.path.unlink()
        seg.path.with_suffix(".off").unlink(missing_ok=True)
        directory = seg.path.parent
        if directory in self._adopted and all(s.path.parent != directory for s in self._segments):
            _remove_dir(directory)
            os.close(self._adopted.pop(directory))

    def _adopt(self) -> None:
        """Lock the subdirectories of dead owners and queue their records, oldest first."""
        found: list[tuple[str, list[_Segment]]] = []
        for name in os.listdir(self._base):
            path = self._base / name
            if not _OWNER_DIR.fullmatch(name) or path == self._dir or path in self._adopted:
                continue
            try:
                fd = os.open(path / _LOCK, os.O_RDWR)
            except OSError:
                continue  # removed meanwhile, or not ours
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)  # owner alive (or adopted by another instance)
                continue
            if os.fstat(fd).st_nlink == 0:  # removed by an adopter before we got the lock
                os.close(fd)
                continue
            self._adopted[path] = fd
            segments = [self._load(p) for p in sorted(path.glob("*.seg"))]
            if segments := [s for s in segments if s.count]:
                found.append((path.name, segments))
            else:
                _remove_dir(path)
                os.close(self._adopted.pop(path))
        adopted = [s for _, segments in sorted(found, key=lambda f: f[0]) for s in segments]
        at = sum(s.path.parent != self._dir for s in self._segments)  # after earlier adoptions
        self._segments[at:at] = adopted

    @staticmethod
    def _load(path: Path) -> _Segment:
        try:
            committed = int(path.with_suffix(".off").read_text())
        except FileNotFoundError:
            committed = 0
        seg = _Segment(path, committed, committed, 0)
        with open(path, "rb") as f:
            for _, _, end in _records(f, committed, os.fstat(f.fileno()).st_size):
                seg.end, seg.count = end, seg.count + 1
        return seg

    def close(self) -> None:
        """Release this instance's subdirectory (removed if empty) and adopted ones; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._seal()
            if self._dir is not None:
                if all(s.path.parent != self._dir for s in self._segments):
                    _remove_dir(self._dir)
                os.close(self._dir_fd)
            for fd in self._adopted.values():
                os.close(fd)
            _LIVE.discard(self)


def _reset_spools_in_child() -> None:
    for spool in list(_LIVE):
        spool._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_spools_in_child)
