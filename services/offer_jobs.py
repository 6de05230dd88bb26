"""The value tiers' cut points, recomputed by the projector's clock.

Tiers compare a customer's trailing 12-month net spend with every customer's in the same
currency (projections/offer_view.py), so they need the whole distribution: `refresh_tier_cuts`
computes each currency's cut points in PostgreSQL from rm_offer_spend (one statement) into
rm_tier_cuts, in one transaction with the removal of the old ones. `TierCutsClock` runs it at
each turn of the desertion detector's loop, at most every `interval_s` (never while a catch-up
is going on: it waits until history has settled). The API reads the cut points at request time,
so a customer's tier is up to `interval_s` (plus the length of a catch-up) old.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import psycopg
from psycopg.errors import UndefinedTable
from psycopg_pool import AsyncConnectionPool

from projections.offer_view import TIER_CUTS_SQL, TIER_CUTS_TABLE, tier_window

log = logging.getLogger("crm.offers")

TIER_LOCK = 7_310_004
"""Advisory lock: one refresh at a time across projectors."""


async def refresh_tier_cuts(pool: AsyncConnectionPool[Any], now: datetime) -> int:
    """Recompute every currency's cut points as of `now`; returns how many currencies."""
    since, today = tier_window(now)
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (TIER_LOCK,))
        await conn.execute(f"DELETE FROM {TIER_CUTS_TABLE}")
        cursor = await conn.execute(TIER_CUTS_SQL, {"since": since, "today": today, "now": now})
        return cursor.rowcount


class TierCutsClock:
    """A scan for the desertion detector's loop (`every_turn`): the cut points, every
    `interval_s` at most."""

    def __init__(
        self, interval_s: float = 60.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self.monotonic = monotonic
        self._next = float("-inf")

    async def __call__(self, pool: AsyncConnectionPool[Any], now: datetime) -> int:
        if self.monotonic() < self._next:
            return 0
        self._next = self.monotonic() + self.interval_s
        started = time.perf_counter()
        try:
            currencies = await refresh_tier_cuts(pool, now)
        except (psycopg.OperationalError, UndefinedTable) as error:  # again next turn
            log.warning("event=tier_cuts_failed error=%r", str(error))
            return 0
        log.info("event=tier_cuts_computed currencies=%d ms=%d",
                 currencies, (time.perf_counter() - started) * 1000)  # fmt: skip
        return 0  # no alerts
