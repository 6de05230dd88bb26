"""Pipeline benchmark: SDK → recorder → event store → relay → projector → customer 360 → API.

Starts its own embedded broker and PostgreSQL on free ports (data in a temporary folder under
/tmp), creates topics and tables, runs recorder, relay, projector and API as subprocesses, waits
until a warm-up event is visible through the API (every consumer group has joined), then measures
in one run:

1. SDK send rate: N events (55 % purchase.made, 25 % call.logged, 12 % invoice.issued, 8 %
   payment.received) over C customers, from the first send until `flush()` returns 0.
2. End-to-end throughput: from the first send until sum(version) over rm_customer_360 counts all
   N events (PostgreSQL polled every 0.2 s). Also printed: when each stage (recorder, relay,
   projector) had every event, and the CPU seconds each process used meanwhile.
3. Freshness at a steady 1,000 events/s: paced sends; for every 50th event a poller asks
   GET /customers/{id} (raw keep-alive HTTP) until the customer's version reaches the one this
   event gave it. A fixed number of pollers (`--pollers`), in a process of their own so that
   their polls do not wait for the GIL of the sending thread, each take the sample due soonest and
   poll it again 10 ms after a "not yet", 200 polls/s at most in all (the load of the GET
   target, however fast the API answers); with many samples pending each is polled less often,
   so the report also gives the lower bound (the last "not yet" answer) and the mean time spent
   in each stage (events waiting there / rate, from PostgreSQL).
4. GET /customers/{id} latency at 200 requests/s over existing customers, open loop: requests
   are scheduled by time and measured from the scheduled time (no coordinated omission).
   4b. The same for GET /customers/{id}/balance (aging computed on each request).
5. Raw aiokafka consume rate of crm.touchpoints from the beginning (no group, all partitions,
   getmany of 5,000): the ceiling for one Python consumer on this broker.

Run it from the repository root (a default run takes about 3 minutes):

    .venv/bin/python bench/pipeline.py            # 200k events, 20k customers, 30 s + 20 s
    .venv/bin/python bench/pipeline.py --quick    # smoke run: 20k events, 10 s + 10 s
    .venv/bin/python bench/pipeline.py --events 100000 --customers 10000 --steady-seconds 60

`--keep` leaves the temporary folder (service logs, PostgreSQL data) in place for inspection.
Everything (bench included) shares the machine's CPUs: the figures are for the whole stack on
one host, and the freshness pollers and API take their share while latency is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import ctypes
import heapq
import importlib.util
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import psutil
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from events import topics
from events.producer import TouchpointProducer
from infra.broker import EmbeddedBroker
from infra.eventstore import EventStore
from infra.ports import free_port
from infra.postgres import EmbeddedPostgres
from infra.processes import log_tail, terminate
from infra.topics import ensure_topics

if importlib.util.find_spec("sniffio") is None:
    # httpcore tries `import sniffio` on every request; a failing import searches sys.path
    # each time (a fifth of the client's CPU here). A None entry makes it fail at once.
    sys.modules["sniffio"] = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("services.recorder", "services.relay", "services.projector", "api")
PARTITIONS = 6
SESSION_TIMEOUT_MS = 3000
MONITOR_INTERVAL_S = 0.2  # the end-to-end poll of the read model
FRESHNESS_POLL_S = 0.01  # each pending freshness sample is polled this often
FRESHNESS_POLLS_PER_S = 200.0  # at most, all pollers together: the load of the GET target
FRESHNESS_SAMPLE_EVERY = 50  # 20 samples/s at 1,000 events/s: the polls stay a small load
FRESHNESS_GIVE_UP_S = 30.0
HTTP_CONNECTIONS = 8  # keep-alive connections of the bench's HTTP client
STALL_S = 60.0  # no stage moved for this long: the pipeline is stuck
READY_TIMEOUT_S = 120.0
TARGET_E2E = 10_000.0  # events/s
TARGET_FRESHNESS_P99_MS = 500.0
TARGET_GET_P99_MS = 10.0
WARMUP_CUSTOMER = "bench-warmup"
T = TypeVar("T")


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


# -- workload --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Touchpoint:
    type: str
    customer_id: str
    payload: dict[str, Any]
    occurred_at: str
    event_id: str


_PRODUCTS = [
    (f"SKU-{i:03d}", f"Product {i}", f"{price}.{cents:02d}")
    for i, (price, cents) in enumerate((7 + 13 * k % 240, 9 * k % 100) for k in range(60))
]
_OUTCOMES = ("resolved", "callback requested", "quote requested", "no answer", "escalated")


def customer_id(index: int) -> str:
    return f"C-{index:06d}"


def touchpoint(rng: random.Random, customer: str, serial: int, now: datetime) -> Touchpoint:
    """A purchase (55 %), a logged call (25 %), an invoice (12 %) or a payment (8 %), valid
    against the catalog; invoices and payments give the balance view open items to age."""
    draw = rng.random()
    if draw < 0.2:
        invoice = f"INV-{customer}-{rng.randrange(6)}"
        amount = f"{rng.randint(20, 900)}.{rng.randrange(100):02d}"
        if draw < 0.12:
            kind, payload = (
                "invoice.issued",
                {
                    "invoice_id": invoice,
                    "amount": amount,
                    "currency": "EUR",
                    "due_date": (now + timedelta(days=rng.randint(-120, 30))).date().isoformat(),
                },
            )
        else:
            kind, payload = (
                "payment.received",
                {
                    "payment_id": f"P-{serial}",
                    "amount": amount,
                    "currency": "EUR",
                    **({"invoice_id": invoice} if rng.random() < 0.7 else {}),
                },
            )
    elif draw < 0.75:
        lines, total = [], 0
        for sku, name, price in rng.sample(_PRODUCTS, rng.choice((1, 1, 1, 2, 2, 3))):
            quantity = rng.randint(1, 3)
            total += quantity * int(price.replace(".", ""))
            lines.append({"sku": sku, "name": name, "quantity": quantity, "unit_price": price})
        kind = "purchase.made"
        payload = {
            "order_id": f"O-{serial}",
            "items": lines,
            "total": f"{total // 100}.{total % 100:02d}",
            "currency": "EUR",
        }
    else:
        kind = "call.logged"
        payload = {
            "direction": rng.choice(("inbound", "inbound", "outbound")),
            "duration_seconds": rng.randint(20, 1200),
            "agent": f"agent-{rng.randrange(40)}",
            "outcome": rng.choice(_OUTCOMES),
        }
    occurred = now - timedelta(seconds=rng.randint(0, 86_400))
    return Touchpoint(kind, customer, payload, occurred.isoformat(), str(uuid.uuid4()))


def send(producer: TouchpointProducer, event: Touchpoint) -> None:
    producer.send(
        event.type,
        event.customer_id,
        event.payload,
        occurred_at=event.occurred_at,
        event_id=event.event_id,
    )


# -- processes -------------------------------------------------------------------------------


def _die_with_parent() -> Callable[[], None] | None:
    """preexec_fn: SIGTERM the child when the bench dies, so no service outlives it (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return preexec


@dataclass
class Service:
    """`python -m <module>` in its own session, output to `<workdir>/<module>.log`."""

    module: str
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str], cwd: Path) -> None:
        with self.log_file.open("ab") as output:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=cwd,  # faust writes its data folder into the working directory
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(),
            )

    @property
    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, signal.SIGTERM, timeout=15)


class Stack:
    """Broker, PostgreSQL and the services; `check()` raises if a service exited. `env` adds to
    (or overrides) the services' environment."""

    def __init__(
        self, workdir: Path, modules: Sequence[str] = SERVICES, env: dict[str, str] | None = None
    ) -> None:
        self.workdir = workdir
        self.extra_env = env or {}
        self.broker = EmbeddedBroker(free_port(), workdir)
        self.postgres = EmbeddedPostgres(workdir / "pg", free_port())
        self.api_port = free_port()
        self.services = [Service(m, workdir / f"{m}.log") for m in modules]
        self.extra_pids: dict[str, int] = {}  # more processes of the bench, by name

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        self.broker.start()
        self.postgres.start()
        ensure_topics(self.broker.bootstrap, PARTITIONS)
        store = EventStore(self.postgres.url)
        try:
            store.create_tables()
        finally:
            store.close()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap,
            "DATABASE_URL": self.postgres.url,
            "CRM_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
            "CRM_LOG_LEVEL": os.environ.get("CRM_LOG_LEVEL", "WARNING"),
            "CRM_API_HOST": "127.0.0.1",
            "CRM_API_PORT": str(self.api_port),
            "CRM_DATA_DIR": str(self.workdir / "var"),
            **self.extra_env,
        }
        for service in self.services:
            service.start(env, self.workdir)

    def stop(self) -> None:
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                service.stop()
        with contextlib.suppress(Exception):
            self.postgres.stop()
        with contextlib.suppress(Exception):
            self.broker.stop()

    def check(self) -> None:
        for service in self.services:
            code = service.exit_code
            if code is not None:
                raise BenchError(f"{service.module} exited with code {code}")

    def log_tails(self, lines: int = 30) -> str:
        files = [s.log_file for s in self.services] + [self.broker.log_file, self.postgres.log_file]
        return "".join(log_tail(path, lines) for path in files)

    def cpu_seconds(self) -> dict[str, dict[int, float]]:
        """CPU seconds (user + system) of every process of each component, by pid."""
        roots = {s.module: s.proc.pid for s in self.services if s.proc is not None}
        roots |= {"broker": self.broker.pid, "postgres": self.postgres.pid, "bench": os.getpid()}
        roots |= self.extra_pids
        out: dict[str, dict[int, float]] = {}
        for name, pid in roots.items():
            out[name] = {}
            if pid is None:
                continue
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                family = [root] + (root.children(recursive=True) if name == "postgres" else [])
                for proc in family:
                    with contextlib.suppress(psutil.Error):
                        times = proc.cpu_times()
                        out[name][proc.pid] = times.user + times.system
        return out


def cpu_used(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
) -> dict[str, float]:
    """CPU seconds each component used between two snapshots (new pids count from zero)."""
    return {
        name: sum(t - before.get(name, {}).get(pid, 0.0) for pid, t in pids.items())
        for name, pids in after.items()
    }


def wait_until(
    predicate: Callable[[], bool], stack: Stack, *, timeout: float, what: str, every: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        stack.check()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# -- asyncio helpers -------------------------------------------------------------------------


class AsyncRunner:
    """An event loop in a background thread: the HTTP pollers run there while the main thread
    sends."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="bench-loop", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


async def new_client(base_url: str, connections: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10.0)


async def customer_version(client: httpx.AsyncClient, customer: str) -> int | None:
    """The customer's version in the 360 view via the API, None if not there (yet)."""
    try:
        response = await client.get(f"/customers/{customer}")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    version: int = orjson.loads(response.content)["version"]
    return version


# -- monitor of the pipeline stages ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # perf_counter when the query started (the snapshot it reads)
    stored: int  # last event-store position
    relayed: int  # position the relay tracked as published to crm.events
    projected: int  # position the live projector applied
    viewed: int  # sum(version) over rm_customer_360: events visible in the view
    sent: int  # events the bench had handed to the SDK when the query started


_MONITOR_SQL = """
SELECT (SELECT coalesce(max(notification_id), 0) FROM crm_events),
       (SELECT coalesce(max(notification_id), 0) FROM crm_tracking
         WHERE starts_with(application_name, 'relay:')),
       (SELECT coalesce(max(position), 0) FROM rm_progress WHERE name = 'live'),
       (SELECT coalesce(sum(version), 0)::bigint FROM rm_customer_360)
"""


class Monitor(threading.Thread):
    """Samples the position of every stage from PostgreSQL every `interval` seconds."""

    def __init__(self, dsn: str) -> None:
        super().__init__(name="bench-monitor", daemon=True)
        self.dsn = dsn
        self.interval = MONITOR_INTERVAL_S
        self.samples: list[Sample] = []
        self.sent = 0  # events handed to the SDK so far, updated by the sending thread
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self._halt.is_set():
                    at, sent = time.perf_counter(), self.sent
                    row = conn.execute(_MONITOR_SQL).fetchone()
                    assert row is not None
                    with self._lock:
                        self.samples.append(Sample(at, *(int(v) for v in row), sent))
                    self._halt.wait(max(0.0, self.interval - (time.perf_counter() - at)))
        except BaseException as error:
            self.error = error

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    @property
    def latest(self) -> Sample | None:
        if self.error is not None:
            raise BenchError(f"monitor query failed: {self.error!r}")
        with self._lock:
            return self.samples[-1] if self.samples else None

    def since(self, start: float) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if s.at >= start]

    def wait_viewed(self, target: int, stack: Stack, *, what: str, timeout: float) -> Sample:
        """Wait for the first sample with `viewed >= target`; fail on a stall or timeout."""
        deadline = time.monotonic() + timeout
        last: tuple[int, ...] = ()
        moved_at = time.monotonic()
        while True:
            stack.check()
            sample = self.latest
            if sample is not None:
                if sample.viewed >= target:
                    with self._lock:
                        return next(s for s in self.samples if s.viewed >= target)
                state = (sample.stored, sample.relayed, sample.projected, sample.viewed)
                if state != last:
                    last, moved_at = state, time.monotonic()
                elif time.monotonic() - moved_at > STALL_S:
                    raise BenchError(f"pipeline stalled waiting for {what}: {_stalled(sample)}")
            if time.monotonic() > deadline:
                raise BenchError(
                    f"timed out after {timeout:.0f} s waiting for {what}; "
                    f"last sample {sample}, target viewed={target}"
                )
            time.sleep(0.05)


def _stalled(sample: Sample) -> str:
    if sample.relayed < sample.stored:
        return f"relay stuck at position {sample.relayed} of {sample.stored}"
    if sample.projected < sample.relayed:
        return f"projector stuck at position {sample.projected} of {sample.relayed}"
    return (
        f"every stage reached position {sample.stored} but the view holds {sample.viewed} "
        "events (recorder not consuming, or events lost/dead-lettered)"
    )


# -- measurements ----------------------------------------------------------------------------


@dataclass
class Results:
    sdk_rate: float = 0.0
    e2e_rate: float = 0.0
    e2e_seconds: float = 0.0
    stages: list[tuple[str, float, float]] = field(default_factory=list)  # name, done at, rate
    progress: list[Sample] = field(default_factory=list)
    e2e_started: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    steady_cpu: dict[str, float] = field(default_factory=dict)
    steady_seconds: float = 0.0
    freshness_ms: list[float] = field(default_factory=list)
    freshness_missed: int = 0
    freshness_resolution_ms: list[float] = field(default_factory=list)
    steady_rate: float = 0.0
    steady_polls: int = 0
    steady_stage_lag: dict[str, float] = field(default_factory=dict)  # mean events in stage
    freshness_lower_ms: list[float] = field(default_factory=list)
    get_ms: list[float] = field(default_factory=list)
    get_errors: int = 0
    get_rate: float = 0.0
    balance_ms: list[float] = field(default_factory=list)
    balance_errors: int = 0
    balance_rate: float = 0.0
    consume_rate: float = 0.0


def warm_up(
    producer: TouchpointProducer, runner: AsyncRunner, client: httpx.AsyncClient, stack: Stack
) -> None:
    """One event through the whole pipeline: every consumer group has joined afterwards."""
    wait_until(
        lambda: runner.run(_api_ok(client), 10), stack, timeout=READY_TIMEOUT_S, what="the API"
    )
    event = touchpoint(random.Random(0), WARMUP_CUSTOMER, 0, datetime.now(UTC))
    send(producer, event)
    if producer.flush(timeout=30):
        raise BenchError("the warm-up event was not acknowledged by the broker within 30 s")
    wait_until(
        lambda: runner.run(customer_version(client, WARMUP_CUSTOMER), 10) == 1,
        stack,
        timeout=READY_TIMEOUT_S,
        what="the warm-up event in GET /customers/{id} (recorder/projector group joins)",
        every=0.05,
    )


async def _api_ok(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/health")).status_code == 200
    except httpx.HTTPError:
        return False


def run_e2e(
    events: Sequence[Touchpoint],
    producer: TouchpointProducer,
    monitor: Monitor,
    stack: Stack,
    baseline: int,
    results: Results,
) -> None:
    """Phases 1 and 2: send everything as fast as the SDK goes, wait until the view has it."""
    n = len(events)
    cpu_before = stack.cpu_seconds()
    started = time.perf_counter()
    for i, event in enumerate(events, baseline + 1):
        send(producer, event)
        monitor.sent = i
    pending = producer.flush(timeout=120 + n / 2000)
    sent_at = time.perf_counter()
    if pending:
        raise BenchError(f"SDK flush left {pending} of {n} events unacknowledged")
    results.sdk_rate = n / (sent_at - started)
    log(f"sent {n:,} events in {sent_at - started:.1f} s; waiting for the view")
    done = monitor.wait_viewed(
        baseline + n, stack, what=f"{n:,} events in rm_customer_360", timeout=300 + n / 200
    )
    results.cpu = cpu_used(cpu_before, stack.cpu_seconds())
    results.e2e_seconds = done.at - started
    results.e2e_rate = n / results.e2e_seconds
    results.e2e_started = started
    samples = monitor.since(started)
    results.progress = samples
    final = done.stored
    first_stage_at = {
        "recorder (stored)": _first(samples, lambda s: s.stored >= final),
        "relay (published)": _first(samples, lambda s: s.relayed >= final),
        "projector (applied)": _first(samples, lambda s: s.projected >= final),
        "visible in view": done.at,
    }
    results.stages = [
        ("SDK acknowledged", sent_at - started, n / (sent_at - started)),
        *((name, at - started, n / (at - started)) for name, at in first_stage_at.items()),
    ]


def _mean(values: Iterator[int]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else float("nan")


def _first(samples: Sequence[Sample], predicate: Callable[[Sample], bool]) -> float:
    return next((s.at for s in samples if predicate(s)), float("nan"))


@dataclass(order=True)
class _Watch:
    due: float
    customer: str = field(compare=False)
    expected: int = field(compare=False)
    sent_at: float = field(compare=False)
    last_poll: float = field(compare=False, default=0.0)


class KeepAliveGet:
    """GETs over one keep-alive HTTP/1.1 connection, on asyncio streams: httpx costs about 1 ms
    of CPU a request, which on 2 cores would slow down what is measured."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str) -> tuple[bytes, bytes] | None:
        """(status code, body) of GET `path`; None on a connection error (closed: the next GET
        opens a new connection)."""
        request = f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        try:
            if self._streams is None:
                self._streams = await asyncio.open_connection(self.host, self.port)
            reader, writer = self._streams
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            if length is None:
                raise BenchError(f"no Content-Length in {head!r}")
            body = await reader.readexactly(int(length.group(1)))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self.close()
            return None
        return head.split(b" ", 2)[1], body

    async def version(self, customer: str) -> int | None:
        """The customer's version in the 360 view, None if not there (yet) or on an error."""
        answer = await self.get(f"/customers/{customer}")
        if answer is None or answer[0] != b"200":
            return None
        version: int = orjson.loads(answer[1])["version"]
        return version

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


class FreshnessWatcher:
    """Polls every pending sample through GET /customers/{id} until its version shows.

    A fixed number of worker tasks (one KeepAliveGet connection each) take the sample whose next
    poll is due soonest; a sample is polled again `FRESHNESS_POLL_S` after its previous answer,
    and all workers together poll at most `FRESHNESS_POLLS_PER_S` times a second. The load on
    the API is so bounded however many samples are pending and however fast the API answers (a
    faster API must not buy itself more polls); when the polls cannot keep up, a sample is polled
    less often, which `resolution_ms` (time between the last "not yet" and the "visible" answer,
    the uncertainty of each latency) shows.
    Runs on the runner's loop; `add` is called from other threads.
    """

    def __init__(self, api_url: str, loop: asyncio.AbstractEventLoop) -> None:
        self.address = httpx.URL(api_url)
        self.loop = loop
        self.latency_ms: list[float] = []
        self.resolution_ms: list[float] = []
        self.lower_ms: list[float] = []  # when the last "not yet" answer was received
        self.missed = 0
        self.polls = 0
        self._heap: list[_Watch] = []
        self._busy = 0
        self._next_slot = 0.0  # the earliest time of the next poll, over all workers
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, workers: int) -> None:
        self._tasks = [self.loop.create_task(self._work()) for _ in range(workers)]

    def add(self, customer: str, expected: int, sent_at: float) -> None:
        """Thread-safe: watch `customer` until its version reaches `expected`."""
        self.loop.call_soon_threadsafe(self._push, _Watch(sent_at, customer, expected, sent_at))

    def _push(self, item: _Watch) -> None:
        heapq.heappush(self._heap, item)
        self._wake.set()

    async def _work(self) -> None:
        connection = KeepAliveGet(self.address.host, self.address.port or 80)
        try:
            await self._poll(connection)
        finally:
            connection.close()

    async def _poll(self, connection: KeepAliveGet) -> None:
        while True:
            if not self._heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self._heap[0].due - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(min(wait, FRESHNESS_POLL_S))
                continue
            slot = max(time.perf_counter(), self._next_slot)
            self._next_slot = slot + 1 / FRESHNESS_POLLS_PER_S
            if slot > time.perf_counter():
                await asyncio.sleep(slot - time.perf_counter())
                if not self._heap or self._heap[0].due > time.perf_counter():
                    continue  # another worker took it meanwhile
            item = heapq.heappop(self._heap)
            self._busy += 1
            try:
                version = await connection.version(item.customer)
            finally:
                self._busy -= 1
            self.polls += 1
            now = time.perf_counter()
            if version is not None and version >= item.expected:
                before = item.last_poll or item.sent_at
                self.latency_ms.append((now - item.sent_at) * 1000)
                self.lower_ms.append((before - item.sent_at) * 1000)
                self.resolution_ms.append((now - before) * 1000)
            elif now - item.sent_at > FRESHNESS_GIVE_UP_S:
                self.missed += 1
            else:
                item.last_poll, item.due = now, now + FRESHNESS_POLL_S
                self._push(item)

    async def drain(self, timeout: float) -> None:
        """Wait until every sample is seen or given up, then stop the workers."""
        deadline = time.perf_counter() + timeout
        while (self._heap or self._busy) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.missed += len(self._heap) + self._busy
        self._heap.clear()


class WatcherProcess:
    """The FreshnessWatcher in a process of its own: its polls do not wait for the GIL while the
    main thread sends (perf_counter is CLOCK_MONOTONIC, shared by processes on Linux)."""

    def __init__(self, api_url: str, workers: int) -> None:
        ctx = multiprocessing.get_context("spawn")  # the parent has threads: never fork it
        self._samples: multiprocessing.Queue[tuple[str, int, float] | None] = ctx.Queue()
        self._results: multiprocessing.Queue[dict[str, Any]] = ctx.Queue()
        self.proc = ctx.Process(
            target=_watch, args=(api_url, workers, self._samples, self._results), daemon=True
        )
        self.proc.start()

    def add(self, customer: str, expected: int, sent_at: float) -> None:
        self._samples.put((customer, expected, sent_at))

    def finish(self, timeout: float) -> dict[str, Any]:
        """Wait until every sample is seen or given up; the watcher's figures."""
        self._samples.put(None)
        try:
            return self._results.get(timeout=timeout)
        finally:
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()


def _watch(
    api_url: str,
    workers: int,
    samples: multiprocessing.Queue[tuple[str, int, float] | None],
    results: multiprocessing.Queue[dict[str, Any]],
) -> None:
    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        watcher = FreshnessWatcher(api_url, loop)
        watcher.start(workers)
        while (sample := await loop.run_in_executor(None, samples.get)) is not None:
            watcher.add(*sample)
        await watcher.drain(FRESHNESS_GIVE_UP_S + 5)
        return {
            "latency_ms": watcher.latency_ms,
            "lower_ms": watcher.lower_ms,
            "resolution_ms": watcher.resolution_ms,
            "missed": watcher.missed,
            "polls": watcher.polls,
        }

    results.put(asyncio.run(main()))


def run_steady(
    rng: random.Random,
    counts: Counter[str],
    customers: int,
    rate: float,
    seconds: float,
    producer: TouchpointProducer,
    monitor: Monitor,
    stack: Stack,
    pollers: int,
    results: Results,
) -> int:
    """Phase 3: paced sends; every 50th event is watched through the API. Returns events sent."""
    total = int(rate * seconds)
    now = datetime.now(UTC)
    events = [
        touchpoint(rng, customer_id(rng.randrange(customers)), 10_000_000 + i, now)
        for i in range(total)
    ]
    watcher = WatcherProcess(stack.api_url, pollers)
    stack.extra_pids["pollers"] = watcher.proc.pid
    monitor.interval = 0.5  # keep the monitor's own load low while latency is measured
    baseline = monitor.sent
    cpu_before = stack.cpu_seconds()
    started = time.perf_counter()
    for i, event in enumerate(events):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        counts[event.customer_id] += 1
        sent_at = time.perf_counter()
        send(producer, event)
        monitor.sent = baseline + i + 1
        if i % FRESHNESS_SAMPLE_EVERY == 0:
            watcher.add(event.customer_id, counts[event.customer_id], sent_at)
    elapsed = time.perf_counter() - started
    results.steady_cpu = cpu_used(cpu_before, stack.cpu_seconds())
    results.steady_seconds = elapsed
    results.steady_rate = total / elapsed
    if producer.flush(timeout=60):
        raise BenchError("steady phase: the SDK could not deliver within 60 s")
    watched = watcher.finish(FRESHNESS_GIVE_UP_S + 30)
    results.freshness_ms = sorted(watched["latency_ms"])
    results.freshness_lower_ms = sorted(watched["lower_ms"])
    results.freshness_resolution_ms = sorted(watched["resolution_ms"])
    results.freshness_missed = watched["missed"]
    results.steady_polls = watched["polls"]
    # Mean events waiting in each stage (Little's law: / rate = mean time in the stage), over
    # the samples after the first second. Positions equal event counts here (one writer).
    window = [s for s in monitor.since(started + 1.0) if s.at <= started + elapsed]
    if window:
        results.steady_stage_lag = {
            "SDK + broker + recorder (sent -> stored)": _mean(s.sent - s.stored for s in window),
            "relay (stored -> published)": _mean(s.stored - s.relayed for s in window),
            "projector (published -> in view)": _mean(s.relayed - s.viewed for s in window),
        }
    monitor.interval = MONITOR_INTERVAL_S
    return total


async def get_load(
    api_url: str, customers: Sequence[str], suffix: str, rate: float, seconds: float
) -> tuple[list[float], int, float]:
    """Phase 4: open-loop GETs of /customers/{id}{suffix} at `rate`, over HTTP_CONNECTIONS
    keep-alive connections (KeepAliveGet: the load costs the machine little of its own);
    latency from each request's scheduled time, waiting for a free connection included."""
    address = httpx.URL(api_url)
    free: asyncio.Queue[KeepAliveGet] = asyncio.Queue()
    for _ in range(HTTP_CONNECTIONS):
        free.put_nowait(KeepAliveGet(address.host, address.port or 80))

    async def one(customer: str, scheduled: float) -> tuple[float, bool]:
        connection = await free.get()
        try:
            answer = await connection.get(f"/customers/{customer}{suffix}")
        finally:
            free.put_nowait(connection)
        return time.perf_counter() - scheduled, answer is not None and answer[0] == b"200"

    total = int(rate * seconds)
    tasks = []
    started = time.perf_counter() + 0.05
    for i, customer in enumerate(customers[:total]):
        scheduled = started + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(customer, scheduled)))
    outcomes = await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    while not free.empty():
        free.get_nowait().close()
    latencies = sorted(lat * 1000 for lat, ok in outcomes if ok)
    return latencies, sum(1 for _, ok in outcomes if not ok), total / elapsed


async def consume_raw(bootstrap: str, n: int) -> float:
    """Phase 5: aiokafka, no group, all partitions from the beginning, until n records."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        await consumer.topics()  # metadata
        partitions = consumer.partitions_for_topic(topics.TOUCHPOINTS) or set()
        if not partitions:
            raise BenchError(f"no partitions for {topics.TOUCHPOINTS}")
        consumer.assign([TopicPartition(topics.TOUCHPOINTS, p) for p in sorted(partitions)])
        await consumer.seek_to_beginning()
        read = 0
        started = time.perf_counter()
        idle_since = started
        while read < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            got = sum(len(records) for records in batch.values())
            read += got
            now = time.perf_counter()
            if got:
                idle_since = now
            elif now - idle_since > 30:
                raise BenchError(f"raw consume: read {read} of {n} records, then nothing for 30 s")
        return read / (time.perf_counter() - started)
    finally:
        await consumer.stop()


# -- report ----------------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted values (nan if empty)."""
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(args: argparse.Namespace, r: Results) -> None:
    rows: list[tuple[str, str, str, str]] = []
    rows.append(("1. SDK send rate", f"{r.sdk_rate:,.0f} events/s", "-", ""))
    rows.append(
        (
            "2. end-to-end throughput",
            f"{r.e2e_rate:,.0f} events/s ({r.e2e_seconds:.1f} s)",
            f">= {TARGET_E2E:,.0f} events/s",
            verdict(r.e2e_rate >= TARGET_E2E),
        )
    )
    f = r.freshness_ms
    p99 = pct(f, 99)
    rows.append(
        (
            f"3. freshness @ {args.steady_rate:,.0f}/s",
            f"p50 {pct(f, 50):.0f} / p95 {pct(f, 95):.0f} / p99 {p99:.0f} / max "
            f"{(f[-1] if f else float('nan')):.0f} ms",
            f"p99 < {TARGET_FRESHNESS_P99_MS:.0f} ms",
            verdict(p99 < TARGET_FRESHNESS_P99_MS and not r.freshness_missed),
        )
    )
    rows.append(
        (
            "",
            f"{len(f):,} samples, {r.freshness_missed} not seen within {FRESHNESS_GIVE_UP_S:.0f} s",
            "",
            "",
        )
    )
    g = r.get_ms
    get_p99 = pct(g, 99)
    rows.append(
        (
            f"4. GET /customers/{{id}} @ {args.get_rate:,.0f}/s",
            f"p50 {pct(g, 50):.1f} / p99 {get_p99:.1f} / max "
            f"{(g[-1] if g else float('nan')):.1f} ms",
            f"p99 < {TARGET_GET_P99_MS:.0f} ms",
            verdict(get_p99 < TARGET_GET_P99_MS and not r.get_errors),
        )
    )
    rows.append(("", f"{len(g):,} ok, {r.get_errors} errors, {r.get_rate:,.0f} req/s", "", ""))
    b = r.balance_ms
    rows.append(
        (
            f"4b. GET .../balance @ {args.get_rate:,.0f}/s",
            f"p50 {pct(b, 50):.1f} / p99 {pct(b, 99):.1f} / max "
            f"{(b[-1] if b else float('nan')):.1f} ms",
            "",
            "",
        )
    )
    rows.append(
        ("", f"{len(b):,} ok, {r.balance_errors} errors, {r.balance_rate:,.0f} req/s", "", "")
    )
    rows.append(("5. raw aiokafka consume", f"{r.consume_rate:,.0f} events/s", "(ceiling)", ""))

    print(
        f"\nPipeline benchmark: {args.events:,} events, {args.customers:,} customers, "
        f"{os.cpu_count()} CPUs, {PARTITIONS} partitions"
    )
    widths = (30, 48, 22, 4)
    header = ("measure", "result", "target", "")
    print("".join(h.ljust(w + 2) for h, w in zip(header, widths, strict=True)).rstrip())
    print("-" * (sum(widths) + 6))
    for row in rows:
        print("".join(c.ljust(w + 2) for c, w in zip(row, widths, strict=True)).rstrip())

    print("\nEnd-to-end run: when each stage had all events (s after the first send)")
    for name, at, rate in r.stages:
        print(f"  {name:<22}{at:>8.1f} s   {rate:>10,.0f} events/s")
    print("  progress (positions; viewed = sum(version)):")
    print(f"  {'t s':>6}{'stored':>10}{'relayed':>10}{'projected':>11}{'viewed':>10}")
    for s in _thin(r.progress, 16):
        print(
            f"  {s.at - r.e2e_started:>6.1f}{s.stored:>10,}{s.relayed:>10,}"
            f"{s.projected:>11,}{s.viewed:>10,}"
        )
    print_cpu(r.cpu, r.e2e_seconds)
    res, low = r.freshness_resolution_ms, r.freshness_lower_ms
    print(
        f"\nSteady phase: {r.steady_rate:,.0f} events/s sent; {r.steady_polls:,} GET polls "
        f"({r.steady_polls / max(r.steady_seconds, 1e-9):,.0f}/s, {args.pollers} pollers)"
    )
    print(
        "  freshness is the first 'visible' answer; the last 'not yet' answer came "
        f"p50 {pct(res, 50):.0f} / p99 {pct(res, 99):.0f} ms earlier\n"
        f"  (lower bound of the latency: p50 {pct(low, 50):.0f} / p99 {pct(low, 99):.0f} ms)"
    )
    print("  mean time in each stage (mean events waiting / rate):")
    for name, waiting in r.steady_stage_lag.items():
        ms = waiting / max(r.steady_rate, 1e-9) * 1000
        print(f"    {name:<42}{waiting:>8,.0f} events  {ms:>7,.0f} ms")
    print_cpu(r.steady_cpu, r.steady_seconds)


def print_cpu(cpu: dict[str, float], window: float) -> None:
    print(f"  CPU seconds during the {window:.1f} s window ({os.cpu_count()} CPUs):")
    for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"    {name:<20}{seconds:>7.1f} s  ({seconds / window:>4.0%} of one CPU)")


def _thin(samples: Sequence[Sample], rows: int) -> list[Sample]:
    if len(samples) <= rows:
        return list(samples)
    step = (len(samples) - 1) / (rows - 1)
    return [samples[round(i * step)] for i in range(rows)]


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, help="default 200,000 (--quick: 20,000)")
    parser.add_argument("--customers", type=int, help="default 20,000 (--quick: 2,000)")
    parser.add_argument("--steady-seconds", type=float, help="default 30 (--quick: 10)")
    parser.add_argument("--steady-rate", type=float, default=1000.0, help="events/s")
    parser.add_argument("--get-seconds", type=float, help="default 20 (--quick: 10)")
    parser.add_argument("--get-rate", type=float, default=200.0, help="requests/s")
    parser.add_argument(
        "--pollers", type=int, default=2, help="concurrent freshness polls (HTTP connections)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    defaults = (20_000, 2_000, 10.0, 10.0) if args.quick else (200_000, 20_000, 30.0, 20.0)
    for name, default in zip(
        ("events", "customers", "steady_seconds", "get_seconds"), defaults, strict=True
    ):
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.events < 1 or args.customers < 1:
        parser.error("--events and --customers must be positive")
    return args


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    # Under /tmp: embedded PostgreSQL needs world-traversable parents when run as root.
    workdir = Path(tempfile.mkdtemp(prefix="crm-bench-pipeline-", dir="/tmp"))
    workdir.chmod(0o755)
    try:
        yield workdir
    finally:
        if keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace, workdir: Path) -> Results:
    results = Results()
    rng = random.Random(args.seed)
    now = datetime.now(UTC)
    log(f"generating {args.events:,} events over {args.customers:,} customers")
    events = [
        touchpoint(rng, customer_id(rng.randrange(args.customers)), i, now)
        for i in range(args.events)
    ]
    counts: Counter[str] = Counter(e.customer_id for e in events)

    # no post-purchase follow-ups: the bench counts each customer's versions from what it sends
    stack = Stack(workdir, env={"CRM_FOLLOWUP_PURCHASE_THRESHOLDS": "{}"})
    runner: AsyncRunner | None = None
    client: httpx.AsyncClient | None = None
    monitor: Monitor | None = None
    producer: TouchpointProducer | None = None
    try:
        log(f"starting broker, PostgreSQL and services in {workdir}")
        stack.start()
        runner = AsyncRunner()
        client = runner.run(new_client(stack.api_url, max(HTTP_CONNECTIONS, args.pollers)), 5)
        producer = TouchpointProducer(
            stack.broker.bootstrap, source="bench", spool_dir=workdir / "spool"
        )
        log("warming up (API up, one event through every consumer group)")
        warm_up(producer, runner, client, stack)
        monitor = Monitor(stack.postgres.url)
        monitor.start()

        log(f"phases 1+2: sending {args.events:,} events")
        run_e2e(events, producer, monitor, stack, 1, results)
        log(f"end to end: {results.e2e_rate:,.0f} events/s")

        log(f"phase 3: {args.steady_rate:,.0f} events/s for {args.steady_seconds:.0f} s")
        steady = run_steady(
            rng, counts, args.customers, args.steady_rate, args.steady_seconds,
            producer, monitor, stack, args.pollers, results,
        )  # fmt: skip
        monitor.wait_viewed(
            1 + args.events + steady, stack, what="the steady-phase events", timeout=120
        )
        monitor.stop()

        log(f"phase 4: GET at {args.get_rate:,.0f} req/s for {args.get_seconds:.0f} s")
        known = sorted(counts)
        picks = [rng.choice(known) for _ in range(int(args.get_rate * args.get_seconds))]
        results.get_ms, results.get_errors, results.get_rate = runner.run(
            get_load(stack.api_url, picks, "", args.get_rate, args.get_seconds),
            args.get_seconds + 60,
        )
        log(f"phase 4b: GET balance at {args.get_rate:,.0f} req/s for {args.get_seconds:.0f} s")
        picks = [rng.choice(known) for _ in range(int(args.get_rate * args.get_seconds))]
        results.balance_ms, results.balance_errors, results.balance_rate = runner.run(
            get_load(stack.api_url, picks, "/balance", args.get_rate, args.get_seconds),
            args.get_seconds + 60,
        )
        stack.check()

        log(f"phase 5: raw aiokafka consume of {args.events:,} records")
        results.consume_rate = runner.run(consume_raw(stack.broker.bootstrap, args.events), 600)
        return results
    except BaseException as error:
        log(f"FAILED: {error}")
        print(stack.log_tails(), file=sys.stderr)
        raise
    finally:
        if monitor is not None:
            monitor.stop()
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close(timeout=5)
        if runner is not None:
            if client is not None:
                with contextlib.suppress(Exception):
                    runner.run(client.aclose(), 5)
            runner.close()
        stack.stop()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        with workspace(args.keep) as workdir:
            results = run(args, workdir)
    except BenchError as error:
        raise SystemExit(f"benchmark failed: {error}") from None
    report(args, results)


if __name__ == "__main__":
    main()
