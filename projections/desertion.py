"""Desertion: is a customer's monthly spend falling away? Pure judgement and episodes.

A customer is **deserting** when their average monthly net spend (purchases minus refunds, by the
UTC calendar month of `occurred_at`) over the last `recent_months` complete months is at most
`ratio` of the average over the `baseline_months` before them, and that baseline average is at
least `minimum`, both in the customer's main currency. Months without purchases count as zero.

`judge` gives a `Verdict` for one moment; `transition` turns verdicts into episodes: the first
deserting verdict opens one (`customer.deserting`), a recovery ends it
(`customer.deserting.resolved`), and a later drop opens the next. What the verdict is judged on
(the monthly series) is folded into the customer 360 (`projections.customer_360`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

from projections.alerts import CUSTOMER_DESERTING, CUSTOMER_DESERTING_RESOLVED, Alert, alert_id
from projections.recorded import rfc3339

State = Literal["deserting", "steady", "low_spend", "too_new"]
"""`low_spend`: the baseline average is under the minimum; `too_new`: the customer's first event
is later than the first baseline month, so there is no baseline to compare with."""

MonthlySpend = Mapping[str, Mapping[str, Decimal]]
"""Net spend by currency, then by month "YYYY-MM"; a missing month is zero."""

_CENT = Decimal("0.01")
_RATIO_STEP = Decimal("0.0001")


@dataclass(frozen=True, slots=True)
class DesertionRule:
    recent_months: int = 4
    baseline_months: int = 6
    ratio: Decimal = Decimal("0.6")
    minimum: Decimal = Decimal("100")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The judgement of one customer at one moment. `months` holds the judged window, oldest
    first, in `currency` (None when the customer never spent anything in the window)."""

    state: State
    currency: str | None
    baseline_monthly: Decimal
    recent_monthly: Decimal
    drop_ratio: Decimal | None  # recent / baseline; None when the baseline is zero
    months: dict[str, Decimal]

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "currency": self.currency,
            "baseline_monthly": f"{self.baseline_monthly:f}",
            "recent_monthly": f"{self.recent_monthly:f}",
            "drop_ratio": None if self.drop_ratio is None else f"{self.drop_ratio:f}",
            "months": {month: f"{amount:f}" for month, amount in self.months.items()},
        }


def month_of(moment: datetime) -> str:
    """The UTC calendar month of an aware time, as "YYYY-MM"."""
    utc = moment.astimezone(UTC)
    return f"{utc.year:04d}-{utc.month:02d}"


def month_start(moment: datetime) -> datetime:
    """Midnight UTC on the first day of the UTC month of an aware time."""
    return moment.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _index(month: str) -> int:
    return int(month[:4]) * 12 + int(month[5:7]) - 1


def _text(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def judge(
    spend: MonthlySpend, first_seen: datetime | None, now: datetime, rule: DesertionRule
) -> Verdict:
    """The customer's state at `now`: the last complete months are the ones before now's month."""
    recent_start = _index(month_of(now)) - rule.recent_months
    baseline_start = recent_start - rule.baseline_months
    window = [_text(i) for i in range(baseline_start, recent_start + rule.recent_months)]
    currency = _main_currency(spend, window)
    by_month = spend.get(currency, {}) if currency else {}
    months = {month: by_month.get(month, Decimal(0)) for month in window}
    amounts = list(months.values())
    baseline = sum(amounts[: rule.baseline_months], Decimal(0)) / rule.baseline_months
    recent = sum(amounts[rule.baseline_months :], Decimal(0)) / rule.recent_months
    ratio = (recent / baseline).quantize(_RATIO_STEP) if baseline > 0 else None
    state: State
    if first_seen is None or _index(month_of(first_seen)) > baseline_start:
        state = "too_new"
    elif baseline < rule.minimum or baseline <= 0:
        state = "low_spend"
    elif recent <= rule.ratio * baseline:
        state = "deserting"
    else:
        state = "steady"
    return Verdict(state, currency, _cents(baseline), _cents(recent), ratio, months)


def _main_currency(spend: MonthlySpend, window: list[str]) -> str | None:
    """The currency the customer spent most in over the window, then ever (ties: alphabetical);
    None if they never bought anything."""

    def rank(currency: str) -> tuple[Decimal, Decimal, str]:
        by_month = spend[currency]
        in_window = sum((by_month.get(m, Decimal(0)) for m in window), Decimal(0))
        return -in_window, -sum(by_month.values(), Decimal(0)), currency

    return min(spend, key=rank, default=None)


def _cents(amount: Decimal) -> Decimal:
    return amount.quantize(_CENT, rounding=ROUND_HALF_EVEN)


# --- episodes -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Episodes:
    """A customer's desertion history: how many episodes began, whether one is open, since when,
    and the baseline it began with (a recovery is judged against it)."""

    count: int = 0
    open: bool = False
    since: datetime | None = None
    baseline_monthly: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    episodes: Episodes
    alerts: list[Alert]
    resolved: list[str]  # alert ids of episodes that ended


def transition(
    customer_id: str, episodes: Episodes, verdict: Verdict, now: datetime, rule: DesertionRule
) -> Transition:
    """What a verdict changes. An open episode ends when the customer is steady again, or spends
    more than `ratio` of the baseline the episode began with (once the baseline window has moved
    past the good months, the judged baseline alone would never call a returning customer back)."""
    if verdict.state == "deserting" and not episodes.open:
        opened = Episodes(episodes.count + 1, True, now, verdict.baseline_monthly)
        return Transition(opened, [_deserting(customer_id, opened, verdict, now)], [])
    if episodes.open and _recovered(episodes, verdict, rule):
        closed = Episodes(episodes.count, False, now, None)
        key = str(episodes.count)
        ended = alert_id(CUSTOMER_DESERTING, customer_id, key)
        resolution = _resolved(customer_id, key, verdict, now)
        return Transition(closed, [resolution], [ended, resolution.alert_id])
    return Transition(episodes, [], [])


def _recovered(episodes: Episodes, verdict: Verdict, rule: DesertionRule) -> bool:
    if verdict.state == "steady":
        return True
    began_with = episodes.baseline_monthly or Decimal(0)
    return verdict.state != "deserting" and verdict.recent_monthly > rule.ratio * began_with


def _deserting(customer_id: str, episodes: Episodes, verdict: Verdict, now: datetime) -> Alert:
    details = {**_details(verdict), "episode": episodes.count}
    share = "0" if verdict.drop_ratio is None else f"{verdict.drop_ratio * 100:.0f}"
    action = (
        f"Send a retention coupon and have the account manager call: monthly spend fell from "
        f"{verdict.baseline_monthly} to {verdict.recent_monthly} {verdict.currency} "
        f"({share}% of usual)."
    )
    return Alert.for_episode(
        CUSTOMER_DESERTING, customer_id, str(episodes.count), now, details, action
    )


def _resolved(customer_id: str, key: str, verdict: Verdict, now: datetime) -> Alert:
    details = {**_details(verdict), "episode": int(key)}
    action = "None needed: spend has recovered. Close any retention action still open."
    return Alert.for_episode(CUSTOMER_DESERTING_RESOLVED, customer_id, key, now, details, action)


def _details(verdict: Verdict) -> dict[str, Any]:
    doc = verdict.to_json()
    del doc["state"]
    return doc


# --- the episodes table: one row per judged customer ----------------------------------------

DESERTION_TABLE = "crm_desertion"
CREATE_DESERTION_SQL = (
    f"CREATE TABLE IF NOT EXISTS {DESERTION_TABLE} ("
    "customer_id text PRIMARY KEY, episodes integer NOT NULL, open boolean NOT NULL, "
    "since timestamptz, episode_baseline numeric, verdict jsonb NOT NULL, "
    "judged_at timestamptz NOT NULL, judged_version bigint NOT NULL)"
)
UPSERT_DESERTION_SQL = (
    f"INSERT INTO {DESERTION_TABLE} (customer_id, episodes, open, since, episode_baseline, "
    "verdict, judged_at, judged_version) SELECT * FROM unnest(%b::text[], %b::integer[], "
    "%b::boolean[], %b::timestamptz[], %b::numeric[], %b::jsonb[], %b::timestamptz[], "
    "%b::bigint[]) ON CONFLICT (customer_id) DO UPDATE SET episodes = excluded.episodes, "
    "open = excluded.open, since = excluded.since, episode_baseline = excluded.episode_baseline, "
    "verdict = excluded.verdict, judged_at = excluded.judged_at, "
    "judged_version = excluded.judged_version"
)


def churn_risk(
    verdict: dict[str, Any],
    episodes: int,
    is_open: bool,
    since: datetime | None,
    judged_at: datetime,
) -> dict[str, Any]:
    """The 360's `churn_risk` from a crm_desertion row: the last verdict, and the episodes."""
    return {
        **verdict,
        "deserting": is_open,
        "episodes": episodes,
        "since": None if since is None else rfc3339(since),
        "judged_at": rfc3339(judged_at),
    }
