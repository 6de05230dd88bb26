"""What complaints signal beyond one case: a product's complaint spike (a service deficiency to
correct before more customers meet it) and a customer's satisfaction indicator. Pure functions.

**Spike rule.** A product's complaints are read at each moment one is filed: `count` is how many
were filed in the rolling `window` ending then (the half-open interval (t - window, t]), `usual`
is how many a window held on average over the `baseline` before it ((t - window - baseline,
t - window], scaled to one window). The product is spiking at t when `count >= minimum` and
`count >= factor * usual` (so a product without complaints before needs `minimum` only). A spike
episode begins at the first spiking reading and lasts until a whole `window` passes without one;
a spiking reading after that begins a new episode. The `product.complaints.spike` alert belongs to
an episode (its id: the product and the episode's first reading), so it is raised once however
often the rule is asked; its details are those of that first reading, whenever it is asked.

**Satisfaction rule** (`satisfaction`): the customer is
- `unhappy` when a complaint is open past its deadline, or the latest verdict is "not satisfied";
- `happy` when no complaint is open and the latest verdict is "satisfied";
- `neutral` otherwise: no complaints, no verdict given, or complaints open within their SLA.
The latest verdict is the `satisfied` flag of the most recent resolution among the cases that are
resolved now and gave one; a reopened case is open again, so its earlier verdict no longer counts.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Literal, NamedTuple

from projections.alerts import PRODUCT_COMPLAINTS_SPIKE, Alert, alert_id
from projections.complaints import ComplaintCase, CustomerComplaints, breached
from projections.recorded import rfc3339

Satisfaction = Literal["happy", "neutral", "unhappy"]

_MICROSECOND = timedelta(microseconds=1)
_HUNDREDTH = Decimal("0.01")
SPIKE_ACTION = (
    "Find the common cause of these complaints (batch, supplier, release) and correct it before "
    "more customers meet it."
)


@dataclass(frozen=True, slots=True)
class SpikePolicy:
    """The spike rule's settings (see the module docstring)."""

    minimum: int = 5
    window: timedelta = timedelta(hours=24)
    baseline: timedelta = timedelta(days=28)
    factor: Decimal = Decimal(3)

    def __post_init__(self) -> None:
        if self.minimum < 1 or self.window <= timedelta(0) or self.baseline <= timedelta(0):
            raise ValueError(f"a spike needs minimum >= 1 and positive windows, got {self!r}")


class ProductComplaint(NamedTuple):
    """One filed complaint about a product."""

    at: datetime
    customer_id: str
    complaint_id: str


@dataclass(frozen=True, slots=True)
class SpikeReading:
    """The rule read at `at`: `window` holds the complaints counted, oldest first."""

    at: datetime
    count: int
    baseline_count: int
    usual: Decimal
    spiking: bool
    window: tuple[ProductComplaint, ...]


@dataclass(frozen=True, slots=True)
class SpikeEpisode:
    first: SpikeReading
    last_at: datetime  # the time of its last spiking reading

    def ongoing(self, now: datetime, policy: SpikePolicy) -> bool:
        return now < self.last_at + policy.window


def product_complaints(cases: Iterable[ComplaintCase]) -> dict[str, list[ProductComplaint]]:
    """The filed complaints of each product named by `cases`, by filing time."""
    found: dict[str, list[ProductComplaint]] = {}
    for case in cases:
        if case.product_sku is not None:
            complaint = ProductComplaint(case.filed_at, case.customer_id, case.complaint_id)
            found.setdefault(case.product_sku, []).append(complaint)
    return {sku: sorted(complaints) for sku, complaints in found.items()}


def read_spike(
    complaints: Sequence[ProductComplaint], at: datetime, policy: SpikePolicy
) -> SpikeReading:
    """The rule at `at`, over `complaints` sorted by time (as `sorted()` sorts them)."""
    return _reading(complaints, [c.at for c in complaints], at, policy)


def _reading(
    complaints: Sequence[ProductComplaint],
    times: Sequence[datetime],
    at: datetime,
    policy: SpikePolicy,
) -> SpikeReading:
    end = bisect_right(times, at)
    start = bisect_right(times, at - policy.window)
    baseline_start = bisect_right(times, at - policy.window - policy.baseline)
    count, baseline_count = end - start, start - baseline_start
    window_us, baseline_us = policy.window // _MICROSECOND, policy.baseline // _MICROSECOND
    usual = Decimal(baseline_count * window_us) / Decimal(baseline_us)
    spiking = (
        count >= policy.minimum
        and count * baseline_us >= policy.factor * baseline_count * window_us
    )
    return SpikeReading(at, count, baseline_count, usual, spiking, tuple(complaints[start:end]))


def spike_episodes(
    complaints: Iterable[ProductComplaint], now: datetime, policy: SpikePolicy = SpikePolicy()
) -> list[SpikeEpisode]:
    """The product's spike episodes up to `now`, oldest first (complaints after `now` are not
    known yet and are left out)."""
    known = sorted(c for c in complaints if c.at <= now)
    times = [c.at for c in known]
    found: list[SpikeEpisode] = []
    for at in sorted(set(times)):
        reading = _reading(known, times, at, policy)
        if not reading.spiking:
            continue
        if found and at < found[-1].last_at + policy.window:
            found[-1] = SpikeEpisode(found[-1].first, at)
        else:
            found.append(SpikeEpisode(reading, at))
    return found


def spike_key(product_sku: str, episode: SpikeEpisode) -> str:
    """The alert's episode: its first reading, then the sku (which may hold "|")."""
    return f"{rfc3339(episode.first.at)}|{product_sku}"


def product_spike(
    product_sku: str,
    complaints: Iterable[ProductComplaint],
    now: datetime,
    policy: SpikePolicy = SpikePolicy(),
) -> Alert | None:
    """The `product.complaints.spike` alert of the episode going on at `now`, if any.

    An alert needs a customer: it is the one whose complaint began the episode (the latest in
    that first window); `customer_ids` in the details names everyone affected then. The alert id
    does not depend on it (kind, "product", episode)."""
    found = spike_episodes(complaints, now, policy)
    if not found or not found[-1].ongoing(now, policy):
        return None
    episode = found[-1]
    first = episode.first
    details = {
        "product_sku": product_sku,
        "since": rfc3339(first.at),
        "complaints": first.count,
        "window_seconds": policy.window // timedelta(seconds=1),
        "usual": f"{first.usual.quantize(_HUNDREDTH):f}",
        "baseline_days": policy.baseline // timedelta(days=1),
        "complaint_ids": [c.complaint_id for c in first.window],
        "customer_ids": sorted({c.customer_id for c in first.window}),
    }
    hours = policy.window / timedelta(hours=1)
    action = f"{first.count} complaints about {product_sku} in {hours:g} h: {SPIKE_ACTION}"
    return Alert(
        alert_id(PRODUCT_COMPLAINTS_SPIKE, "product", spike_key(product_sku, episode)),
        PRODUCT_COMPLAINTS_SPIKE,
        first.window[-1].customer_id,
        now,
        details,
        action,
    )


def satisfaction(cases: Iterable[ComplaintCase], now: datetime) -> Satisfaction:
    """The customer's indicator from their cases at `now` (rule in the module docstring)."""
    cases = list(cases)
    verdicts = [c for c in cases if not c.is_open and c.satisfied is not None]
    latest = max(verdicts, key=lambda c: (c.resolved_at, c.complaint_id), default=None)
    open_breached = [breached(c, now) for c in cases if c.is_open]
    return satisfaction_of(open_breached, None if latest is None else latest.satisfied)


def satisfaction_of(open_breached: Sequence[bool], latest_verdict: bool | None) -> Satisfaction:
    """The rule on what it needs: whether each open complaint is past its deadline, and the
    latest verdict (None: none given). The 360 reads just these from the case rows."""
    if any(open_breached) or latest_verdict is False:
        return "unhappy"
    if latest_verdict is True and not open_breached:
        return "happy"
    return "neutral"


# --- what the projector's spike check needs ---------------------------------------------------


def spike_lookback(policy: SpikePolicy) -> timedelta:
    """How far back the filings of a product are read to find the episode going on now: twice
    a window and its baseline (an episode lasting longer would need its product to keep spiking
    against a baseline made of the spike itself)."""
    return 2 * (policy.window + policy.baseline)


def new_filings(
    changes: Iterable[tuple[CustomerComplaints | None, CustomerComplaints]],
) -> dict[str, list[ProductComplaint]]:
    """The complaints about a product filed by the changes of one batch ((before, after) states
    of customers), by product."""
    found: dict[str, list[ProductComplaint]] = {}
    for before, after in changes:
        known = {} if before is None else before.cases
        fresh = [c for i, c in after.cases.items() if i not in known]
        for sku, complaints in product_complaints(fresh).items():
            found.setdefault(sku, []).extend(complaints)
    return found
