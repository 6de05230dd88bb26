"""The projector's faust consumer: faust's aiokafka consumer with two costs of its intake cut.

- faust lets a fetch wait up to 1.5 s for data (hard-coded); the embedded broker does not answer a
  waiting fetch early when data arrives, so events would sit there. The fetcher asks every 20 ms.
- faust hands every message to the streams through `wait_first(on_message(msg), flow suspended)`,
  which makes four tasks and an `asyncio.wait` per message (bench/faust_intake.py: faust spends
  121 µs of CPU per message with it, 78 µs without). Almost always `on_message` finishes without
  suspending (the stream buffer has room), so `PromptConsumer.wait_first` runs it inline up to
  its first suspension, and only a message that has to wait goes the original way, racing the
  flow's suspension (a rebalance) as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, TypeVar

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitArgT, WaitResults
from mode.utils.times import Seconds

FETCH_MAX_WAIT_MS = 20
T = TypeVar("T")


class Suspended:
    """The rest of a coroutine that `run_until_suspended` started: awaiting it (or a task of it)
    goes on from where the coroutine waits, with what it waits on."""

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, waiting_on = self._coro, self._waiting_on
        while True:
            try:
                try:
                    sent = yield waiting_on
                except BaseException as error:  # a cancellation goes on into the coroutine
                    waiting_on = coro.throw(error)
                else:
                    waiting_on = coro.send(sent)
            except StopIteration as stop:
                return stop.value


def run_until_suspended(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run `coro` in the caller's task until it finishes or first suspends: (True, its result),
    or (False, a `Suspended` to await for the rest). Its exception propagates."""
    try:
        waiting_on = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, Suspended(coro, waiting_on)


class _PromptConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by the fetcher at start
        return consumer


class PromptConsumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer with a short fetch wait and an inline hand-over (module doc)."""

    def _new_consumer_thread(self) -> _PromptConsumerThread:
        return _PromptConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: WaitArgT, timeout: Seconds | None = None) -> WaitResults:
        """`Service.wait_first`, with the first coroutine run inline while the flow runs; faust
        calls it only to hand a message over (`_drain_messages`)."""
        first, *others = coros
        if asyncio.iscoroutine(first) and not (self.suspend_flow.is_set() or self.should_stop):
            try:
                finished, outcome = run_until_suspended(first)
            except BaseException:
                _close(others)
                raise
            if finished:
                _close(others)
                return WaitResults([first], [outcome], False)
            coros = (outcome, *others)
        return await super().wait_first(*coros, timeout=timeout)


def _close(waitables: list[WaitArgT]) -> None:
    """Close the coroutines that will not be awaited (no "never awaited" warning)."""
    for waitable in waitables:
        if asyncio.iscoroutine(waitable):
            waitable.close()


async def each_batch(
    stream: faust.StreamT[Any],
    most: int,
    fold: Callable[[list[faust.EventT]], Awaitable[T]],
    write: Callable[[T], Awaitable[None]],
) -> None:
    """Hand the stream's events over in batches of what has arrived (at most `most`): `fold`
    each batch, then `write` it in a task of its own, so that the next batch is taken and folded
    while it is written. Writes run one at a time, in order, and the next one starts only once
    the one before succeeded; a batch is acked (faust may commit it) only once written. A failed
    write ends the loop with its error, and the batch folded meanwhile is dropped. A write in
    flight when the loop ends (the agent stopped or cancelled) is finished, not cancelled: a
    cancelled transaction would leave the batch unapplied until a gap fill or a restart."""
    manual = stream.noack()

    async def write_and_ack(folded: T, events: list[faust.EventT]) -> None:
        await write(folded)
        for done in events:
            await manual.ack(done)

    writing: asyncio.Task[None] | None = None
    batch: list[faust.EventT] = []
    try:
        async for event in manual.events():
            batch.append(event)
            if len(batch) < most and not manual.channel.empty():
                continue  # more has arrived already: take it into this batch
            folded = await fold(batch)
            if writing is not None:
                await asyncio.wait([writing])  # unlike `await`, a cancelled agent leaves it be
                written, writing = writing, None
                written.result()  # its error, if it failed
            writing = asyncio.create_task(write_and_ack(folded, batch))
            batch = []
    finally:
        if writing is not None:  # the agent stops or failed: the write in flight finishes first
            await writing
