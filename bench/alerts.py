"""Alert latency benchmark: from the purchase that completes a drop to the alert on SSE and on a
webhook.

Starts its own embedded broker and PostgreSQL on free ports, runs recorder, relay, projector, API
and webhook dispatcher as subprocesses, registers a webhook on a receiver in this process (which
checks every signature) and opens `GET /alerts/stream?kind=customer.deserting`. Then:

1. Loads the history of `--customers` customers as one catch-up: 50.00 a month for the 6 baseline
   months, nothing since. Their baseline is under the minimum (100): `low_spend`, no alert. Waits
   until every one is judged.
2. One customer at a time, sends (SDK, flushed) a late order of 6,000.00 dated in a baseline month:
   the baseline becomes (6 x 50 + 6000) / 6 = 1,050 against a recent 0, so this purchase completes
   a drop. Measures from just before the send until the `customer.deserting` alert arrives on the
   SSE stream and at the webhook receiver. Samples are `--gap` seconds apart (a lone late order,
   not a catch-up: see the README's desertion section).

    .venv/bin/python bench/alerts.py                  # 200 samples
    .venv/bin/python bench/alerts.py --customers 50   # quicker

Everything shares the machine's CPUs; the figures are for the whole stack on one host.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import orjson
import psycopg

from events.producer import Item, TouchpointProducer
from infra.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import SERVICES, BenchError, Stack, log, pct, wait_until, workspace

MODULES = (*SERVICES, "services.webhooks")
KIND = "customer.deserting"
SECRET = "bench-secret-0123456789abcdef"
TARGET_P99_MS = 1000.0
SAMPLE_TIMEOUT_S = 15.0


class Arrivals:
    """When each customer's alert arrived, per channel (monotonic seconds)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self.at: dict[str, dict[str, float]] = {"sse": {}, "webhook": {}}
        self.bad_signatures = 0

    def arrived(self, channel: str, customer_id: str) -> None:
        with self._lock:
            self.at[channel].setdefault(customer_id, time.monotonic())
            self._lock.notify_all()

    def wait(self, customer_id: str, timeout: float) -> bool:
        with self._lock:
            return self._lock.wait_for(
                lambda: all(customer_id in got for got in self.at.values()), timeout
            )


def receiver(arrivals: Arrivals) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            signed = f"{self.headers['X-CRM-Timestamp']}.".encode() + body
            digest = hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(self.headers["X-CRM-Signature"], f"sha256={digest}"):
                arrivals.bad_signatures += 1
            else:
                alert = orjson.loads(body)
                if alert["kind"] == KIND:
                    arrivals.arrived("webhook", alert["customer_id"])
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def follow_stream(url: str, arrivals: Arrivals, stop: threading.Event) -> None:
    """Read the SSE stream, reconnecting with Last-Event-ID, until `stop`."""
    last_id: str | None = None
    while not stop.is_set():
        headers = {} if last_id is None else {"Last-Event-ID": last_id}
        timeout = httpx.Timeout(5, read=None)
        params = {"kind": KIND}
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream("GET", url, params=params, headers=headers, timeout=timeout) as answer,
        ):
            for line in answer.iter_lines():
                if line.startswith("id:"):
                    last_id = line[3:].strip()
                elif line.startswith("data:"):
                    arrivals.arrived("sse", orjson.loads(line[5:])["customer_id"])
                if stop.is_set():
                    return
        time.sleep(0.2)


def month(offset: int, day: int = 15) -> datetime:
    now = datetime.now(UTC)
    index = now.year * 12 + now.month - 1 + offset
    return datetime(index // 12, index % 12 + 1, day, 12, tzinfo=UTC)


def purchase(sdk: TouchpointProducer, customer_id: str, at: datetime, total: str) -> None:
    items = [Item(sku="SKU-1", quantity=1, unit_price=total)]
    order_id = f"O-{at:%Y%m%d}-{total}"
    sdk.purchase_made(customer_id, order_id=order_id, items=items, total=total, currency="EUR",
                      occurred_at=at)  # fmt: skip


def judged(dsn: str, customers: int, version: int) -> Callable[[], bool]:
    def check() -> bool:
        with psycopg.connect(dsn) as conn:
            try:
                row = conn.execute(
                    "SELECT count(*) FROM crm_desertion WHERE judged_version >= %s", (version,)
                ).fetchone()
            except psycopg.errors.UndefinedTable:
                return False
        return row is not None and row[0] >= customers

    return check


def run(args: argparse.Namespace, workdir: Path) -> tuple[list[float], list[float], int]:
    env = {"CRM_DESERTION_SETTLE_SECONDS": "2", "CRM_LOG_LEVEL": "WARNING"}
    stack = Stack(workdir, MODULES, env)
    arrivals = Arrivals()
    server = receiver(arrivals)
    stop = threading.Event()
    try:
        log(f"starting broker, PostgreSQL and services in {workdir}")
        stack.start()
        wait_until(lambda: _api_up(stack.api_url), stack, timeout=120, what="the API")
        hook = f"http://127.0.0.1:{server.server_port}/hook"
        answer = httpx.post(f"{stack.api_url}/subscriptions",
                            json={"url": hook, "kinds": [KIND], "secret": SECRET})  # fmt: skip
        if answer.status_code != 201:
            raise BenchError(f"POST /subscriptions: {answer.status_code} {answer.text}")
        stream = threading.Thread(
            target=follow_stream,
            args=(f"{stack.api_url}/alerts/stream", arrivals, stop),
            daemon=True,
        )
        stream.start()
        customers = [f"bench-{n:05d}" for n in range(args.customers)]
        with TouchpointProducer(stack.broker.bootstrap, source="bench",
                                spool_dir=workdir / "spool") as sdk:  # fmt: skip
            log(f"loading the history of {len(customers)} customers (low spend, then nothing)")
            for customer_id in customers:
                sdk.customer_registered(customer_id, name="Bench", occurred_at=month(-11, 1))
                for offset in range(-10, -4):
                    purchase(sdk, customer_id, month(offset), "50.00")
            sdk.flush()
            wait_until(judged(stack.postgres.url, len(customers), 7), stack, timeout=300,
                       what="every customer judged after the catch-up", every=0.5)  # fmt: skip
            log(f"{len(customers)} samples, {args.gap} s apart")
            sse, webhook = [], []
            for customer_id in customers:
                started = time.monotonic()
                purchase(sdk, customer_id, month(-8, 20), "6000.00")
                sdk.flush()
                if not arrivals.wait(customer_id, SAMPLE_TIMEOUT_S):
                    stack.check()
                    raise BenchError(f"no alert for {customer_id} in {SAMPLE_TIMEOUT_S} s")
                sse.append((arrivals.at["sse"][customer_id] - started) * 1000)
                webhook.append((arrivals.at["webhook"][customer_id] - started) * 1000)
                time.sleep(args.gap)
        return sse, webhook, arrivals.bad_signatures
    except BaseException as error:
        log(f"FAILED: {error}")
        print(stack.log_tails(), file=sys.stderr)
        raise
    finally:
        stop.set()
        server.shutdown()
        stack.stop()


def _api_up(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/alerts", params={"limit": 1}, timeout=2).status_code == 200
    return False


def report(sse: list[float], webhook: list[float], bad_signatures: int) -> None:
    print(f"\nalert latency, purchase completing a drop -> alert ({len(sse)} samples)")
    print(f"{'channel':<10}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}  target p99 < 1000 ms")
    for name, values in (("SSE", sorted(sse)), ("webhook", sorted(webhook))):
        p99 = pct(values, 99)
        verdict = "PASS" if p99 < TARGET_P99_MS else "FAIL"
        print(f"{name:<10}{pct(values, 50):>10.0f}{p99:>10.0f}{values[-1]:>10.0f}  {verdict}")
    print(f"webhook signatures that did not verify: {bad_signatures}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--customers", type=int, default=200, help="samples (one per customer)")
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between samples")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        with workspace(args.keep) as workdir:
            results = run(args, workdir)
    except BenchError as error:
        raise SystemExit(f"benchmark failed: {error}") from None
    report(*results)


if __name__ == "__main__":
    main()
