"""Webhook dispatcher: POSTs every alert to the endpoints subscribed to its kind, signed, with
retries, and logs every attempt.

- Fan-out: the dispatcher follows the alert log (crm_alerts) after the position it tracks; for
  each new alert it creates a pending delivery per matching active subscription, and advances its
  position in the same transaction. A NOTIFY on crm_alerts wakes it, a poll every few seconds
  covers a missed one. A subscription receives the alerts logged after it was created.
- Dispatch: each subscription has its own lane: `webhook_concurrency_per_subscription` workers
  and an HTTP client of that many connections. A worker claims the subscription's next due
  delivery (a lease in the row, so a crash mid-attempt retries it later), POSTs the alert,
  records the attempt and the delivery's new state (services/webhook_policy.py) in one
  transaction. A slow or dead endpoint only holds its own lane.
- State lives in PostgreSQL (tables in infra/webhooks.py, statements in
  services/webhook_store.py): pending deliveries survive a restart, delivered
  ones are never sent again. Delivery is at least once: receivers drop a repeat by
  `X-CRM-Delivery-Id`.

Run it with `python -m services.webhooks` (the `crm up` supervisor does). SIGTERM stops it once
the attempts in flight have finished and been recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
import orjson
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from events.webhooks import (
    ALERT_ID_HEADER,
    DELIVERY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    sign,
)
from infra.logs import configure_logging
from infra.settings import Settings
from projections.alerts import ALERTS_CHANNEL, Alert
from services.webhook_policy import Decision, Outcome, RetryPolicy, Status, decide
from services.webhook_store import Attempt, DeliveryStore, Job

log = logging.getLogger("crm.webhooks")

USER_AGENT = "crm-webhooks/1"
POLL_S = 5.0
"""Longest wait for a NOTIFY before looking at the alert log and the subscriptions anyway."""
LEASE_MARGIN_S = 30.0
"""A claimed delivery is due again this long after its request's timeout (a crashed attempt)."""

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def body_of(alert: dict[str, Any]) -> bytes:
    """The request body: the alert as `Alert.to_json` writes it (JSONB does not keep the order
    of its keys, the contract's model does)."""
    return orjson.dumps(Alert.from_json(alert).to_json())


def signed_headers(job: Job, body: bytes, timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(job.secret, timestamp, body),
        ALERT_ID_HEADER: job.alert_id,
        DELIVERY_ID_HEADER: str(job.delivery_id),
    }


@dataclass(frozen=True, slots=True)
class Config:
    policy: RetryPolicy
    timeout_s: float
    concurrency: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Config:
        policy = RetryPolicy(
            backoff_seconds=settings.webhook_backoff_seconds,
            max_backoff_seconds=settings.webhook_max_backoff_seconds,
            retry_seconds=settings.webhook_retry_seconds,
        )
        return cls(
            policy, settings.webhook_timeout_seconds, settings.webhook_concurrency_per_subscription
        )


class Lane:
    """One subscription's workers and HTTP client: what its endpoint can slow down."""

    def __init__(
        self, subscription: UUID, store: DeliveryStore, config: Config, clock: Clock
    ) -> None:
        self.subscription = subscription
        self.store = store
        self.config = config
        self.clock = clock
        self.client = httpx.AsyncClient(
            timeout=config.timeout_s,
            limits=httpx.Limits(max_connections=config.concurrency),
            headers={"User-Agent": USER_AGENT},
        )
        self.stopping = False
        self.wakes = [asyncio.Event() for _ in range(config.concurrency)]
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, group: asyncio.TaskGroup) -> None:
        self.tasks = [group.create_task(self.work(wake)) for wake in self.wakes]

    def wake(self) -> None:
        """New deliveries: idle workers look for work at once."""
        for wake in self.wakes:
            wake.set()

    async def close(self) -> None:
        """Stop once the attempts in flight are recorded."""
        self.stopping = True
        self.wake()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.aclose()

    async def work(self, wake: asyncio.Event) -> None:
        lease = timedelta(seconds=self.config.timeout_s + LEASE_MARGIN_S)
        while not self.stopping:
            wake.clear()  # before looking: a wake-up during the claim is not lost
            now = self.clock()
            job = await self.store.claim(self.subscription, now, now + lease)
            if job is not None:
                await self.deliver(job)
                continue
            due = await self.store.next_due(self.subscription)
            wait = POLL_S if due is None else (due - self.clock()).total_seconds()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=min(max(wait, 0.0), POLL_S))

    async def deliver(self, job: Job) -> None:
        if not job.active:
            return  # deleted meanwhile: the DELETE cancels the delivery
        if job.alert is None:
            error = f"alert {job.alert_id} is no longer in the alert log"
            await self.store.finish(job, None, Decision(Status.FAILED, error=error), self.clock())
            log.error("event=delivery_failed delivery_id=%s error=%r", job.delivery_id, error)
            return
        at = self.clock()
        started = time.monotonic()
        outcome = await self.post(job, body_of(job.alert), at)
        attempt = Attempt(at, outcome.status_code, outcome.error, _ms_since(started))
        now = self.clock()
        decision = decide(
            self.config.policy, outcome, job.attempt, job.created_at, now, random.random()
        )
        await self.store.finish(job, attempt, decision, now)
        next_at = decision.next_attempt_at.isoformat() if decision.next_attempt_at else "-"
        log.info("event=delivery_attempt subscription_id=%s delivery_id=%s alert_id=%s "
                 "attempt=%d outcome=%r duration_ms=%d status=%s next_attempt_at=%s",
                 self.subscription, job.delivery_id, job.alert_id, job.attempt,
                 outcome.describe(), attempt.duration_ms, decision.status, next_at)  # fmt: skip

    async def post(self, job: Job, body: bytes, at: datetime) -> Outcome:
        """One POST of `body`, signed at `at`; whatever the endpoint or network does, an Outcome."""
        headers = signed_headers(job, body, int(at.timestamp()))
        timeout = self.config.timeout_s
        try:
            async with asyncio.timeout(timeout):  # httpx's timeouts are per phase
                request = self.client.stream("POST", job.url, content=body, headers=headers)
                async with request as response:  # the response body is not read
                    retry_after = response.headers.get("Retry-After")
                    return Outcome(response.status_code, retry_after=retry_after)
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(None, f"timeout after {timeout:g} s")
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            return Outcome(None, f"{type(error).__name__}: {error}")


class Dispatcher:
    """Follows the alert log, creates deliveries and runs one lane per active subscription."""

    def __init__(
        self, dsn: str, store: DeliveryStore, config: Config, clock: Clock = utc_now
    ) -> None:
        self.dsn = dsn
        self.store = store
        self.config = config
        self.clock = clock
        self.lanes: dict[UUID, Lane] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set; raises if a part fails."""
        async with asyncio.TaskGroup() as group:
            follower = group.create_task(self.follow(group))
            await _first(stop.wait(), follower)
            follower.cancel()
            await asyncio.gather(*(lane.close() for lane in self.lanes.values()))
        log.info("event=stopped lanes=%d", len(self.lanes))

    async def follow(self, group: asyncio.TaskGroup) -> None:
        await self.store.create_tables()
        async with await AsyncConnection.connect(self.dsn, autocommit=True) as listener:
            await listener.execute(f"LISTEN {ALERTS_CHANNEL}")
            while True:
                await self.reconcile(group)
                while (subscriptions := await self.store.fan_out(self.clock())) is not None:
                    self._wake(subscriptions)
                async for _ in listener.notifies(timeout=POLL_S, stop_after=1):
                    pass

    async def reconcile(self, group: asyncio.TaskGroup) -> None:
        """A lane for every active subscription, none for a deleted one."""
        active = await self.store.active_subscriptions()
        for subscription in active - self.lanes.keys():
            lane = Lane(subscription, self.store, self.config, self.clock)
            lane.start(group)
            self.lanes[subscription] = lane
            log.info("event=lane_started subscription_id=%s", subscription)
        for subscription in self.lanes.keys() - active:
            group.create_task(self.lanes.pop(subscription).close())
            log.info("event=lane_stopped subscription_id=%s reason=deleted", subscription)

    def _wake(self, subscriptions: Iterable[UUID]) -> None:
        for subscription in subscriptions:
            if lane := self.lanes.get(subscription):
                lane.wake()


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


async def _first(waiting: Any, task: asyncio.Task[None]) -> None:
    """Wait for the awaitable `waiting` or for `task` to end, whichever comes first."""
    waiter = asyncio.ensure_future(waiting)
    await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()


async def serve(settings: Settings) -> None:
    """Composition root: wire settings, a PostgreSQL pool and the clock into a Dispatcher."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        settings.dsn, min_size=1, max_size=8, kwargs={"autocommit": True}, open=False,
        name="crm-webhooks",
    )  # fmt: skip
    async with pool:
        config = Config.from_settings(settings)
        log.info("event=started timeout_s=%g retry_s=%g concurrency=%d", config.timeout_s,
                 config.policy.retry_seconds, config.concurrency)  # fmt: skip
        await Dispatcher(settings.dsn, DeliveryStore(pool), config).run(stop)


def main() -> None:
    configure_logging("webhooks")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # every request: logged as an attempt
    try:
        asyncio.run(serve(Settings()))
    except* Exception:
        log.exception("event=dispatcher_failed")  # the supervisor restarts the process
        raise


if __name__ == "__main__":
    main()
