"""The API process's one LISTEN connection on the alert log, which wakes every open alert stream.

Streams do not receive alerts from the feed: each re-reads the log after its own last `seq` when
woken, so a wake-up lost (the connection was down, a writer forgot to NOTIFY) only delays an
alert until the stream's next timed re-read, it never loses one.

    change = feed.next_change()    # take it *before* reading, so no wake-up falls in between
    rows = read_after(last_seq)
    if not rows:
        await feed.wait(change, timeout=5)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg
from psycopg import sql

from infra.eventstore import SCHEMA_LOCK
from projections.alerts import ALERTS_CHANNEL, CREATE_ALERTS_SQL

log = logging.getLogger("crm.api.alert_feed")

APPLICATION_NAME = "crm-api-alert-feed"
"""The feed's connection in pg_stat_activity."""
_CONNECT_TIMEOUT_S = 2
_HEALTH_CHECK_S = 30.0
"""How often an idle LISTEN connection is checked (a silently lost one raises then)."""
_RETRY_MIN_S = 0.5
_RETRY_MAX_S = 10.0


class AlertFeed:
    """Listens on `crm_alerts` (NOTIFY of the transactions that log alerts) and wakes waiters.

    Connects in the background and reconnects after any loss, creating the alert log first if it
    is missing (under the schema lock). `start()` in the app's lifespan, `stop()` at shutdown.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.listening = False
        self._change = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="alert-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def next_change(self) -> asyncio.Event:
        """The event set by the next change of the log (or reconnection of the feed)."""
        return self._change

    @staticmethod
    async def wait(change: asyncio.Event, timeout: float) -> None:
        """Wait until `change` is set, at most `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await change.wait()

    def _changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    async def _run(self) -> None:
        retry = _RETRY_MIN_S
        while True:
            try:
                await self._listen()
            except psycopg.Error as error:
                if self.listening:  # it was up: try again soon
                    retry = _RETRY_MIN_S
                self.listening = False
                log.warning("event=alert_feed_down error=%r retry_s=%.1f", str(error), retry)
            await asyncio.sleep(retry)
            retry = min(retry * 2, _RETRY_MAX_S)

    async def _listen(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self.dsn,
            autocommit=True,
            connect_timeout=_CONNECT_TIMEOUT_S,
            application_name=APPLICATION_NAME,
        )
        async with conn:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                await conn.execute(CREATE_ALERTS_SQL)
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(ALERTS_CHANNEL)))
            self.listening = True
            log.info("event=alert_feed_listening channel=%s", ALERTS_CHANNEL)
            self._changed()  # alerts may have been logged while nobody listened
            while True:
                async for _ in conn.notifies(timeout=_HEALTH_CHECK_S):
                    self._changed()
                await conn.execute("SELECT 1")
