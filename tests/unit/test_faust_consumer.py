"""The projector's faust consumer hands a message over inline when nothing has to wait, and the
way faust does otherwise (services/faust_consumer.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import faust
import pytest

from services.faust_consumer import PromptConsumer, Suspended, each_batch, run_until_suspended


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def test_a_coroutine_that_never_waits_runs_to_its_end_in_the_callers_task() -> None:
    steps: list[str] = []

    async def quick() -> int:
        steps.append("ran")
        return 7

    async def main() -> tuple[bool, Any, list[str], int]:
        tasks_before = len(asyncio.all_tasks())
        finished, value = run_until_suspended(quick())
        return finished, value, list(steps), len(asyncio.all_tasks()) - tasks_before

    assert run(main()) == (True, 7, ["ran"], 0)


def test_a_coroutine_that_waits_goes_on_from_there_when_its_rest_is_awaited() -> None:
    steps: list[str] = []

    async def slow(gate: asyncio.Future[str]) -> str:
        steps.append("before")
        got = await gate
        steps.append(f"after {got}")
        await asyncio.sleep(0)  # a bare yield: the task just runs it again
        return got.upper()

    async def main() -> tuple[list[str], list[str], str]:
        gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        finished, rest = run_until_suspended(slow(gate))
        assert not finished and isinstance(rest, Suspended)
        seen_at_suspension = list(steps)
        task = asyncio.ensure_future(rest)
        await asyncio.sleep(0.01)
        gate.set_result("open")
        return seen_at_suspension, steps, await task

    assert run(main()) == (["before"], ["before", "after open"], "OPEN")


def test_errors_come_out_whether_raised_before_or_after_the_coroutine_waited() -> None:
    async def early() -> None:
        raise ValueError("early")

    async def late(gate: asyncio.Future[None]) -> None:
        await gate
        raise KeyError("late")

    async def main() -> None:
        with pytest.raises(ValueError, match="early"):
            run_until_suspended(early())
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        _, rest = run_until_suspended(late(gate))
        task = asyncio.ensure_future(rest)
        gate.set_result(None)
        with pytest.raises(KeyError, match="late"):
            await task

    run(main())


def test_cancelling_the_rest_cancels_the_coroutine_where_it_waits() -> None:
    steps: list[str] = []

    async def waits_forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            steps.append("cancelled")
            raise

    async def main() -> bool:
        _, rest = run_until_suspended(waits_forever())
        task = asyncio.ensure_future(rest)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert run(main()) is True
    assert steps == ["cancelled"]


def consumer(tmp_path: Path) -> Any:
    """A PromptConsumer of an app that is never started (no broker needed)."""
    app = faust.App("test-prompt", broker="kafka://127.0.0.1:1", web_enabled=False,
                    datadir=str(tmp_path))  # fmt: skip
    app.transport.Consumer = PromptConsumer
    return app.consumer


def test_a_message_handed_over_without_waiting_is_done_at_once(tmp_path: Path) -> None:
    async def on_message() -> asyncio.Task[Any] | None:
        return asyncio.current_task()

    async def main() -> tuple[bool, bool, bool]:
        prompt = consumer(tmp_path)
        assert isinstance(prompt, PromptConsumer)
        flow = prompt.suspend_flow.wait()
        done, results, stopped = await prompt.wait_first(on_message(), flow)
        inline = results == [asyncio.current_task()] and len(done) == 1  # no task of its own
        return inline, stopped, flow.cr_frame is None  # the flow's wait was closed

    assert run(main()) == (True, False, True)


def test_a_message_that_waits_is_dropped_when_the_flow_is_suspended_as_faust_does(
    tmp_path: Path,
) -> None:
    steps: list[str] = []

    async def on_message(room: asyncio.Event) -> None:  # a full stream buffer
        steps.append("waiting for room")
        try:
            await room.wait()
            steps.append("delivered")
        except asyncio.CancelledError:
            steps.append("dropped")
            raise

    async def main() -> tuple[list[Any], bool]:
        prompt = consumer(tmp_path)
        handing = asyncio.ensure_future(
            prompt.wait_first(on_message(asyncio.Event()), prompt.suspend_flow.wait())
        )
        await asyncio.sleep(0.01)
        prompt.suspend_flow.set()  # a rebalance begins
        _, results, _ = await handing
        return results, prompt.suspend_flow.is_set()

    results, suspended = run(main())
    assert (results, suspended) == ([True], True)  # the flow's wait won
    assert steps == ["waiting for room", "dropped"]


def test_a_message_that_waits_is_delivered_once_it_can_be(tmp_path: Path) -> None:
    async def on_message(room: asyncio.Event) -> str:
        await room.wait()
        return "delivered"

    async def main() -> list[Any]:
        prompt = consumer(tmp_path)
        room = asyncio.Event()
        handing = asyncio.ensure_future(
            prompt.wait_first(on_message(room), prompt.suspend_flow.wait())
        )
        await asyncio.sleep(0.01)
        room.set()
        _, results, _ = await handing
        return results

    assert run(main()) == ["delivered"]


# --- each_batch: fold the next batch while the last one is written ------------------------------

Fold = Callable[[list[faust.EventT]], Awaitable[list[faust.EventT]]]
Write = Callable[[list[faust.EventT]], Awaitable[None]]


def batches_through_an_agent(
    tmp_path: Path, fold: Fold, write: Write, messages: int, linger: float = 0.2
) -> tuple[list[faust.EventT], BaseException | None]:
    """Put `messages` values (0, 1, ...) through an agent running `each_batch` with faust's own
    test context (no broker), then stop it after `linger` seconds; each value arrives alone, so
    each is a batch. Returns the events and the error the agent ended with."""
    app = faust.App("test-batches", broker="kafka://127.0.0.1:1", web_enabled=False,
                    datadir=str(tmp_path))  # fmt: skip

    ended: list[BaseException] = []

    @app.agent()
    async def take(stream: faust.StreamT[int]) -> None:
        try:
            await each_batch(stream, 1000, fold, write)
        except Exception as error:
            ended.append(error)

    async def main() -> list[faust.EventT]:
        async with take.test_context() as agent:
            events = [await agent.put(value) for value in range(messages)]
            await asyncio.sleep(linger)
        return events

    events = run(asyncio.wait_for(main(), timeout=20))  # a put waits for a crashed agent forever
    return events, ended[0] if ended else None


def values(batch: list[faust.EventT]) -> list[int]:
    return [event.value for event in batch]


async def as_is(batch: list[faust.EventT]) -> list[faust.EventT]:
    """A fold with nothing to do."""
    return batch


def test_the_next_batch_is_folded_while_the_last_one_is_written_and_writes_keep_their_order(
    tmp_path: Path,
) -> None:
    steps: list[tuple[str, list[int], list[bool]]] = []
    second_folded = asyncio.Event()

    async def fold(batch: list[faust.EventT]) -> list[faust.EventT]:
        steps.append(("fold", values(batch), [e.message.acked for e in batch]))
        if values(batch) == [1]:
            second_folded.set()
        return batch

    async def write(batch: list[faust.EventT]) -> None:
        if values(batch) == [0]:  # only returns once the next batch was folded meanwhile
            await asyncio.wait_for(second_folded.wait(), timeout=5)
        await asyncio.sleep(0.01)
        steps.append(("written", values(batch), [e.message.acked for e in batch]))

    events, error = batches_through_an_agent(tmp_path, fold, write, 4)

    assert error is None
    assert steps == [
        ("fold", [0], [False]),
        ("fold", [1], [False]),  # while 0 is written
        ("written", [0], [False]),  # acked only once written
        ("fold", [2], [False]),
        ("written", [1], [False]),
        ("fold", [3], [False]),
        ("written", [2], [False]),
        ("written", [3], [False]),
    ]
    assert [e.message.acked for e in events] == [True] * 4


def test_a_failed_write_ends_the_loop_and_the_batch_folded_meanwhile_is_never_written(
    tmp_path: Path,
) -> None:
    written: list[int] = []

    async def write(batch: list[faust.EventT]) -> None:
        await asyncio.sleep(0.01)
        if values(batch) == [2]:
            raise RuntimeError("the write failed")
        written.extend(values(batch))

    events, error = batches_through_an_agent(tmp_path, as_is, write, 4)

    assert isinstance(error, RuntimeError) and str(error) == "the write failed"
    assert written == [0, 1]
    assert [e.message.acked for e in events] == [True, True, False, False]


def test_a_write_in_flight_when_the_agent_stops_is_finished_and_acked_not_cancelled(
    tmp_path: Path,
) -> None:
    written: list[int] = []

    async def write(batch: list[faust.EventT]) -> None:
        await asyncio.sleep(0.5 if values(batch) == [0] else 0)  # the agent stops meanwhile
        written.extend(values(batch))

    events, error = batches_through_an_agent(tmp_path, as_is, write, 2, linger=0.1)

    assert error is None
    assert written == [0]  # 1 was folded while 0 was written, and dropped with the stop
    assert [e.message.acked for e in events] == [True, False]
