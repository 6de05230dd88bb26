"""faust intake benchmark: the CPU faust spends per message before the projector sees it.

Starts an embedded broker on a free port, writes N messages of 600 bytes to a 6-partition topic,
then, for each consumer, runs a faust worker (a process of its own, a new group each run) whose
one agent takes the messages as the projector's does (`each_batch`, batches of up to 1,000,
every message acked), with nothing to fold and a write that only waits 2 ms (as if for
PostgreSQL, no CPU). Measured from the first message to the last: the worker's CPU per message
(its threads included), its rate and the mean batch size. Consumers:

- `faust`: faust-streaming's aiokafka consumer as it comes;
- `prompt`: `services.faust_consumer.PromptConsumer`, which the projector uses.

    .venv/bin/python bench/faust_intake.py                 # 100,000 messages, 3 runs each
    .venv/bin/python bench/faust_intake.py --messages 20000 --runs 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faust
import mode.loop
from faust.transport.drivers import aiokafka as faust_aiokafka
from kafka import KafkaProducer

from infra.broker import EmbeddedBroker
from infra.ports import free_port
from infra.topics import ensure_topics
from services.faust_consumer import PromptConsumer, each_batch

TOPIC = "bench.faust-intake"
PARTITIONS = 6
MARK = "figures:"  # faust writes to stdout too
CONSUMERS = {"faust": faust_aiokafka.Consumer, "prompt": PromptConsumer}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def worker(bootstrap: str, consumer: str, messages: int) -> None:
    """Consume `messages` from the start with `consumer`, print the figures as JSON, exit."""
    mode.loop.use("uvloop")  # as the projector runs
    group = f"bench-{consumer}-{uuid.uuid4().hex[:8]}"
    app = faust.App(
        group,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=tempfile.mkdtemp(prefix="faust-intake-"),
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_partitions=PARTITIONS,
    )
    app.transport.Consumer = CONSUMERS[consumer]
    source = app.topic(TOPIC, key_serializer="raw", value_serializer="raw")
    seen = {"messages": 0, "batches": 0, "started": 0.0, "cpu": 0.0}

    async def fold(batch: list[faust.EventT]) -> list[faust.EventT]:
        return batch

    async def write(batch: list[faust.EventT]) -> None:
        if not seen["batches"]:
            seen["started"], seen["cpu"] = time.perf_counter(), cpu_seconds()
        await asyncio.sleep(0.002)
        seen["messages"] += len(batch)
        seen["batches"] += 1
        if seen["messages"] >= messages:
            wall = time.perf_counter() - seen["started"]
            cpu = cpu_seconds() - seen["cpu"]
            figures = {"cpu_us": cpu / messages * 1e6, "rate": messages / wall,
                       "batch": messages / seen["batches"]}  # fmt: skip
            print(MARK, json.dumps(figures), flush=True)
            os._exit(0)

    @app.agent(source, concurrency=1)
    async def take(stream: faust.StreamT[bytes]) -> None:
        await each_batch(stream, 1000, fold, write)

    faust.Worker(
        app, quiet=True, loglevel="error", redirect_stdouts=False
    ).execute_from_commandline()


def produce(bootstrap: str, messages: int) -> None:
    ensure_topics(bootstrap, PARTITIONS, names=[TOPIC])
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=256_000)
    payload = b"x" * 600
    for i in range(messages):
        producer.send(TOPIC, key=f"C-{i % 20_000:06d}".encode(), value=payload)
    producer.flush()
    producer.close()


def run(bootstrap: str, consumer: str, messages: int) -> dict[str, float]:
    args = [sys.executable, __file__, "--worker", consumer, "--bootstrap", bootstrap,
            "--messages", str(messages)]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, check=True)
    line = next(line for line in out.stdout.splitlines() if MARK in line)
    return json.loads(line.split(MARK, 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", choices=sorted(CONSUMERS), help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.bootstrap, args.worker, args.messages)
        return
    broker = EmbeddedBroker(free_port())
    broker.start()
    try:
        produce(broker.bootstrap, args.messages)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in CONSUMERS}
        for _ in range(args.runs):
            for name in CONSUMERS:  # interleaved, so that both see the same machine
                results[name].append(run(broker.bootstrap, name, args.messages))
    finally:
        broker.stop()
    print(f"\nfaust intake: {args.messages:,} messages of 600 bytes, {PARTITIONS} partitions, "
          f"{os.cpu_count()} CPUs, medians of {args.runs} run(s)")  # fmt: skip
    print(f"{'consumer':<10}{'CPU per message':>18}{'messages/s':>14}{'mean batch':>12}")
    for name, runs in results.items():
        cpu = statistics.median(r["cpu_us"] for r in runs)
        rate = statistics.median(r["rate"] for r in runs)
        batch = statistics.median(r["batch"] for r in runs)
        print(f"{name:<10}{cpu:>15.1f} µs{rate:>14,.0f}{batch:>12,.0f}")


if __name__ == "__main__":
    main()
