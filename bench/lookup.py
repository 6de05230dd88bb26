"""Lookup benchmark: GET /customers/lookup?phone=... with 100,000 customers loaded.

Starts its own broker, PostgreSQL and services (bench/pipeline.py's `Stack`), registers
`--customers` customers through the SDK, each with a distinct phone number (Berlin numbers,
written in one of several national and international formats) and e-mail address, waits until
the identifier index holds every phone, then asks GET /customers/lookup?phone=... at `--rate`
requests/s for `--seconds`, open loop (bench/pipeline.py's `get_load`: latency from each
request's scheduled time, over raw keep-alive connections), each time in another format than
the one registered, once the stack is idle after the load. Every 5th
customer also buys 1-3 of 40 products, so the same load then asks GET /customers/{id} of those
(the 360 with `offers` and `segments`: its query and the co-purchase query). Prints p50/p99/max
against the target p99 < 10 ms, and the plans of the lookup and co-purchase queries.

    .venv/bin/python bench/lookup.py                 # 100,000 customers, 200 req/s for 20 s
    .venv/bin/python bench/lookup.py --customers 10000 --seconds 10
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg

from bench.pipeline import (
    AsyncRunner,
    BenchError,
    Stack,
    cpu_used,
    get_load,
    log,
    new_client,
    pct,
    verdict,
    wait_until,
    warm_up,
    workspace,
)
from events.producer import TouchpointProducer
from projections.identifiers import LOOKUP_SQL
from projections.identity import normalize_phone
from projections.offer_view import PAIRS_SQL, pairs_params

TARGET_P99_MS = 10.0
FORMATS = ("030 {a} {b}", "+49 30 {a}{b}", "+49 (0)30 {a}-{b}", "0049 30 {a} {b}", "030/{a}{b}")


def phone(index: int, style: int) -> str:
    digits = f"{20_000_000 + index * 7:08d}"
    return FORMATS[style % len(FORMATS)].format(a=digits[:4], b=digits[4:])


BUYER_EVERY = 5
SKUS = [f"P-{k:02d}" for k in range(40)]


def load(producer: TouchpointProducer, customers: int, rng: random.Random) -> float:
    started = time.perf_counter()
    for i in range(customers):
        producer.customer_registered(
            f"L-{i:06d}",
            name=f"Customer {i}",
            phone=phone(i, i),
            email=f"Customer.{i}@Example.com",
        )
        if i % BUYER_EVERY == 0:
            items = [
                {"sku": s, "name": f"Product {s}", "quantity": 1, "unit_price": "10.00"}
                for s in rng.sample(SKUS, rng.randint(1, 3))
            ]
            total = f"{10 * len(items)}.00"
            producer.purchase_made(
                f"L-{i:06d}", order_id=f"O-{i}", items=items, total=total, currency="EUR"
            )
    if producer.flush(timeout=120):
        raise BenchError("the SDK could not deliver the registrations within 120 s")
    return customers / (time.perf_counter() - started)


def projected(dsn: str, customers: int) -> bool:
    """Every phone indexed and every purchase in the offers view."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            row = conn.execute(
                "SELECT (SELECT count(*) FROM rm_identifiers WHERE kind = 'phone'), "
                "(SELECT count(*) FROM rm_offers)"
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return False
        buyers = len(range(0, customers, BUYER_EVERY))
        return row is not None and row[0] >= customers and row[1] >= buyers


def plan(dsn: str, sql: str, params: tuple[object, ...]) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params).fetchall()
        return "\n".join(f"  {r[0]}" for r in rows)


SETTLE_CPU = 0.15
"""Below this share of one core, services, broker and PostgreSQL together count as idle."""


def settle(stack: Stack, timeout: float = 120.0) -> float:
    """Wait until the stack is idle after the load (the projector's scans of what was loaded,
    PostgreSQL's autovacuum and checkpoint): the target is for a stack with 100,000 customers
    loaded, not for one still loading them. Returns the seconds waited."""
    started = time.perf_counter()
    before = stack.cpu_seconds()
    while time.perf_counter() - started < timeout:
        time.sleep(1.0)
        after = stack.cpu_seconds()
        used = sum(v for k, v in cpu_used(before, after).items() if k != "bench")
        if used < SETTLE_CPU:
            break
        before = after
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    bad = [i for i in range(args.customers) if normalize_phone(phone(i, 0), "DE") is None]
    if bad:
        raise SystemExit(f"benchmark failed: {len(bad)} generated phones do not normalize")
    with workspace(args.keep) as workdir:
        stack = Stack(workdir, env={"CRM_FOLLOWUP_PURCHASE_THRESHOLDS": "{}"})
        runner = AsyncRunner()
        try:
            log(f"starting broker, PostgreSQL and services in {workdir}")
            stack.start()
            client = runner.run(new_client(stack.api_url, 8), 5)
            producer = TouchpointProducer(
                stack.broker.bootstrap, source="bench", spool_dir=workdir / "spool"
            )
            warm_up(producer, runner, client, stack)
            log(f"registering {args.customers:,} customers through the SDK")
            loaded_at = time.perf_counter()
            send_rate = load(producer, args.customers, rng)
            producer.close(timeout=10)
            wait_until(lambda: projected(stack.postgres.url, args.customers), stack,
                       timeout=900, what="everything projected", every=0.5)  # fmt: skip
            load_s = time.perf_counter() - loaded_at
            log(f"loaded and projected in {load_s:.1f} s; settling")
            settled_s = settle(stack)
            log(f"services idle after {settled_s:.0f} s more; looking up")
            total = int(args.rate * args.seconds)
            paths = [
                f"lookup?phone={quote(phone(i, rng.randrange(1, 5) + i), safe='')}"
                for i in (rng.randrange(args.customers) for _ in range(total))
            ]
            latencies, errors, rate = runner.run(
                get_load(stack.api_url, paths, "", args.rate, args.seconds), args.seconds + 60
            )
            stack.check()
            log("GET /customers/{id} of buyers at the same rate")
            buyers = [
                f"L-{rng.randrange(0, args.customers, BUYER_EVERY):06d}" for _ in range(total)
            ]
            get_ms, get_errors, get_rate = runner.run(
                get_load(stack.api_url, buyers, "", args.rate, args.seconds), args.seconds + 60
            )
            stack.check()
            value = normalize_phone(phone(0, 0), "DE") or ""
            explained = plan(stack.postgres.url, LOOKUP_SQL, ("phone", value, 21))
            pairs_plan = plan(stack.postgres.url, PAIRS_SQL, pairs_params(SKUS[:3]))
            runner.run(client.aclose(), 5)
        except BaseException as error:
            log(f"FAILED: {error}")
            print(stack.log_tails(), file=sys.stderr)
            raise
        finally:
            runner.close()
            stack.stop()
    p99 = pct(latencies, 99)
    print(f"\nLookup benchmark: {args.customers:,} customers (SDK {send_rate:,.0f} events/s, "
          f"loaded and indexed in {load_s:.1f} s)")  # fmt: skip
    print(f"{'measure':<34}{'result':<44}{'target':<16}")
    print("-" * 98)
    result = f"p50 {pct(latencies, 50):.1f} / p99 {p99:.1f} / max {latencies[-1]:.1f} ms"
    passed = verdict(p99 < TARGET_P99_MS and not errors)
    measure = f"GET /customers/lookup @ {args.rate:,.0f}/s"
    print(f"{measure:<34}{result:<44}{f'p99 < {TARGET_P99_MS:.0f} ms':<16}{passed}")
    print(f"{'':<34}{len(latencies):,} ok, {errors} errors, {rate:,.0f} req/s")
    result = f"p50 {pct(get_ms, 50):.1f} / p99 {pct(get_ms, 99):.1f} / max {get_ms[-1]:.1f} ms"
    passed = verdict(pct(get_ms, 99) < TARGET_P99_MS and not get_errors)
    measure = f"GET /customers/{{id}} (buyers) @ {args.rate:,.0f}/s"
    print(f"{measure:<34}{result:<44}{f'p99 < {TARGET_P99_MS:.0f} ms':<16}{passed}")
    print(f"{'':<34}{len(get_ms):,} ok, {get_errors} errors, {get_rate:,.0f} req/s")
    print(f"\nPlan of the lookup query:\n{explained}")
    print(f"\nPlan of the co-purchase query (3 SKUs):\n{pairs_plan}")


if __name__ == "__main__":
    try:
        main()
    except BenchError as error:
        raise SystemExit(f"benchmark failed: {error}") from None
