"""What to offer on the screen pop: goes well with, likely next purchase, value tier, interests.
Pure: no I/O; money is Decimal, times aware UTC.

`apply(activity, event)` folds one customer's `purchase.made`, `purchase.refunded` and
`web.visited` events into an `Activity` (other types leave it as it is). It keeps no version of
its own: the caller (the customer 360 fold) applies each event once, in order, so the events of a
merged customer can be folded into its survivor's activity too.

Rules:

- **Orders and refunds.** An order is its `order_id`, its SKUs (quantities do not matter: a
  basket is the set of SKUs), total and currency; a second `purchase.made` with a known
  `order_id` is a resend and changes nothing. Refunds carry no items, so one cannot tell which
  SKU went back: an order counts as **returned** once refunds in its currency reach its total
  (and are above zero). A returned order leaves the co-purchase counts and the repurchase dates;
  a partly refunded one stays. Every refund lowers net spend on the day it occurred.
- **Goes well with** (`goes_well_with`): over all customers' counted orders, with N orders,
  n(A) orders holding A and n(A,B) holding both, lift(A,B) = P(A∧B) / (P(A)·P(B))
  = N·n(A,B) / (n(A)·n(B)): 1 when A and B are bought together as often as chance would have it,
  above 1 when more often. A pair counts only with n(A,B) ≥ `min_support` (3 orders), so that two
  rare products seen once together do not top the list. A candidate B, not among what the
  customer has (SKUs of their counted orders), scores its best lift with any A they have; only
  lift > 1 is offered; best 5 by lift, then n(A,B), then SKU.
- **Likely next purchase** (`likely_next`): SKUs the customer bought on at least
  `min_purchases` (3) different UTC days; the usual interval is the median of the gaps in days
  between those days (robust to one skipped or doubled cycle), rounded half up to whole days;
  the expected date is the last day plus the interval. Due: expected within 30 days of today
  (overdue included); due first, each group by expected date. Lapsed (today more than two
  intervals past the expected date): left out, the habit is gone.
- **Value tier** (`tier_cuts`, `tier_of`): trailing net spend over the 365 days up to now
  (purchases minus refunds, in one currency: compare customers within a currency). With all
  customers' spends sorted from highest, a customer is platinum when fewer than 5% of customers
  spend strictly more, gold when fewer than 20%, silver when fewer than 50%, bronze otherwise;
  ties at a cut go up. Net spend ≤ 0 is always bronze.
- **Interests** (`interests`): `web.visited` carries a URL and maybe a `product_sku`: a product
  view counts for that SKU (SKUs are not guessed from URLs: slugs need not be SKUs); a category
  page `/c/<slug>`, `/category/<slug>` or `/categories/<slug>` counts for that category, and a
  product view for the product's category when the caller passes the SKU → category map. Each view
  weighs 2^(-age / 14 days) (half-life 14 days); only keys last viewed within 90 days show.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from itertools import pairwise
from typing import Literal
from urllib.parse import unquote, urlsplit

from projections.recorded import RecordedEvent

MIN_SUPPORT = 3
TOP = 5
MIN_PURCHASES = 3
DUE_WITHIN = timedelta(days=30)
LAPSED_AFTER_INTERVALS = 2
SPEND_WINDOW = timedelta(days=365)
INTEREST_HALF_LIFE = timedelta(days=14)
INTEREST_WINDOW = timedelta(days=90)
CATEGORY_PATHS = frozenset({"c", "category", "categories"})

Tier = Literal["platinum", "gold", "silver", "bronze"]
TIER_SHARES: tuple[tuple[Tier, Decimal], ...] = (
    ("platinum", Decimal("0.05")),
    ("gold", Decimal("0.20")),
    ("silver", Decimal("0.50")),
)
"""Cumulative shares of customers at or above each tier: top 5%, next 15%, next 30%, the rest."""


# --- the per-customer fold -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Order:
    order_id: str
    at: datetime
    skus: frozenset[str]
    total: Decimal
    currency: str
    refunded: Decimal = Decimal(0)  # refunds in `currency`

    @property
    def returned(self) -> bool:
        return Decimal(0) < self.total <= self.refunded


@dataclass(frozen=True, slots=True)
class Refund:
    at: datetime
    amount: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class Views:
    """Views of one product or category: their weight decayed to `at`, the latest view."""

    weight: float
    at: datetime
    count: int

    def weight_at(self, moment: datetime) -> float:
        return self.weight * _decay(moment - self.at)


@dataclass(frozen=True, slots=True)
class Activity:
    """One customer's orders (by id), refunds, and web views by SKU and by category page."""

    orders: Mapping[str, Order] = field(default_factory=dict)
    refunds: tuple[Refund, ...] = ()
    product_views: Mapping[str, Views] = field(default_factory=dict)
    category_views: Mapping[str, Views] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BasketChange:
    """What one event does to the co-purchase counts: add (+1) or remove (-1) a basket."""

    skus: frozenset[str]
    delta: Literal[1, -1]


def apply(activity: Activity | None, event: RecordedEvent) -> Activity:
    """The activity after `event` (see the module docstring)."""
    activity = Activity() if activity is None else activity
    envelope = event.envelope
    payload, at = envelope.payload, envelope.occurred_at
    if envelope.type == "purchase.made":
        if payload["order_id"] in activity.orders:
            return activity
        skus = frozenset(item["sku"] for item in payload["items"])
        order = Order(payload["order_id"], at, skus, Decimal(payload["total"]), payload["currency"])
        return replace(activity, orders={**activity.orders, order.order_id: order})
    if envelope.type == "purchase.refunded":
        refund = Refund(at, Decimal(payload["amount"]), payload["currency"])
        refunded = replace(activity, refunds=(*activity.refunds, refund))
        order = activity.orders.get(payload["order_id"])
        if order is None or order.currency != refund.currency:
            return refunded
        order = replace(order, refunded=order.refunded + refund.amount)
        return replace(refunded, orders={**activity.orders, order.order_id: order})
    if envelope.type == "web.visited":
        sku, category = payload.get("product_sku"), category_of_url(payload["url"])
        return replace(
            activity,
            product_views=_viewed(activity.product_views, sku, at),
            category_views=_viewed(activity.category_views, category, at),
        )
    return activity


def basket_change(activity: Activity | None, event: RecordedEvent) -> BasketChange | None:
    """The change `event` makes to the co-purchase counts, given the activity before it: a new
    order adds its basket; the refund that makes an order returned removes it."""
    activity = Activity() if activity is None else activity
    envelope = event.envelope
    order = activity.orders.get(envelope.payload.get("order_id", ""))
    if envelope.type == "purchase.made" and order is None:
        return BasketChange(frozenset(item["sku"] for item in envelope.payload["items"]), 1)
    if envelope.type == "purchase.refunded" and order is not None and not order.returned:
        after = apply(activity, event).orders[order.order_id]
        return BasketChange(order.skus, -1) if after.returned else None
    return None


def owned(activity: Activity) -> frozenset[str]:
    """The SKUs of the customer's orders that were not returned."""
    return frozenset(sku for o in activity.orders.values() if not o.returned for sku in o.skus)


# --- goes well with ------------------------------------------------------------------------


@dataclass(slots=True)
class CoPurchases:
    """All customers' counted orders: N (`orders`), n(A) (`products`) and n(A,B) (`pairs`, both
    ways: `pairs[a][b] == pairs[b][a]`). The one mutable aggregate here, on purpose: it is global,
    and copying it for every order would cost O(pairs). Feed it `BasketChange`s; a stream
    processor can keep the same counts in a table, adding each change's deltas."""

    orders: int = 0
    products: dict[str, int] = field(default_factory=dict)
    pairs: dict[str, dict[str, int]] = field(default_factory=dict)

    def apply(self, change: BasketChange) -> None:
        """Count the basket in or out; ValueError (nothing changed) when removing one that was
        never counted. Counts that reach zero are deleted."""
        if change.delta < 0 and (
            self.orders < 1 or any(self.products.get(s, 0) < 1 for s in change.skus)
        ):
            raise ValueError(f"basket {sorted(change.skus)} was not counted: cannot remove it")
        self.orders += change.delta
        for sku in change.skus:
            _bump(self.products, sku, change.delta)
            for other in change.skus - {sku}:
                _bump(self.pairs.setdefault(sku, {}), other, change.delta)
                if not self.pairs[sku]:
                    del self.pairs[sku]

    def together(self, a: str, b: str) -> int:
        return self.pairs.get(a, {}).get(b, 0)

    def lift(self, a: str, b: str) -> float:
        """N·n(A,B) / (n(A)·n(B)); 0.0 when either was never bought."""
        n_a, n_b = self.products.get(a, 0), self.products.get(b, 0)
        return self.orders * self.together(a, b) / (n_a * n_b) if n_a and n_b else 0.0


@dataclass(frozen=True, slots=True)
class Suggestion:
    """Offer `sku`: bought `together` times with `because`, which the customer has, at `lift`."""

    sku: str
    lift: float
    together: int
    because: str


def goes_well_with(
    have: Collection[str], counts: CoPurchases, *, min_support: int = MIN_SUPPORT, limit: int = TOP
) -> list[Suggestion]:
    """The best `limit` products to offer someone who has `have` (see the module docstring)."""
    best: dict[str, Suggestion] = {}
    for a in sorted(have):
        for b, together in counts.pairs.get(a, {}).items():
            if b in have or together < min_support:
                continue
            lift = counts.lift(a, b)
            candidate = Suggestion(b, lift, together, a)
            if lift > 1 and (b not in best or _rank(candidate) < _rank(best[b])):
                best[b] = candidate
    return sorted(best.values(), key=_rank)[:limit]


def _rank(s: Suggestion) -> tuple[float, int, str, str]:
    return -s.lift, -s.together, s.sku, s.because


# --- likely next purchase ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Repurchase:
    """`sku` bought on `days` different days, every `interval_days` usually, last on `last_on`:
    expected on `expected_on`; `due` when that is within DUE_WITHIN of today (or past)."""

    sku: str
    days: int
    interval_days: int
    last_on: date
    expected_on: date
    due: bool


def likely_next(
    activity: Activity, now: datetime, *, min_purchases: int = MIN_PURCHASES
) -> list[Repurchase]:
    """The customer's repeat purchases, due ones first (see the module docstring)."""
    today = _day(now)
    days_by_sku: dict[str, set[date]] = {}
    for order in activity.orders.values():
        if not order.returned and order.at <= now:
            for sku in order.skus:
                days_by_sku.setdefault(sku, set()).add(_day(order.at))
    found: list[Repurchase] = []
    for sku, days in days_by_sku.items():
        if len(days) < max(min_purchases, 2):
            continue
        ordered = sorted(days)
        gaps = [(later - earlier).days for earlier, later in pairwise(ordered)]
        interval = median_days(gaps)
        expected = ordered[-1] + timedelta(days=interval)
        if today > expected + timedelta(days=LAPSED_AFTER_INTERVALS * interval):
            continue
        due = expected <= today + DUE_WITHIN
        found.append(Repurchase(sku, len(days), interval, ordered[-1], expected, due))
    return sorted(found, key=lambda r: (not r.due, r.expected_on, r.sku))


def median_days(gaps: Iterable[int]) -> int:
    """The median of whole-day gaps, rounded half up (the mean of the two middle gaps of an even
    count can end in .5)."""
    middle = Decimal(str(statistics.median(gaps)))
    return int(middle.quantize(Decimal(1), rounding=ROUND_HALF_UP))


# --- value tier ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TierCuts:
    """The least net spend of each tier above bronze among `customers` customers (None: no
    customers to compare with)."""

    customers: int
    platinum: Decimal | None
    gold: Decimal | None
    silver: Decimal | None


def trailing_net_spend(activity: Activity, now: datetime) -> dict[str, Decimal]:
    """Net spend by currency in the SPEND_WINDOW up to `now`: (now - 365 days, now]."""
    start = now - SPEND_WINDOW
    spend: dict[str, Decimal] = {}
    moves = [(o.at, o.total, o.currency) for o in activity.orders.values()]
    moves += [(r.at, -r.amount, r.currency) for r in activity.refunds]
    for at, amount, currency in moves:
        if start < at <= now:
            spend[currency] = spend.get(currency, Decimal(0)) + amount
    return spend


def tier_cuts(spends: Iterable[Decimal]) -> TierCuts:
    """The cut points of every customer's net spend (one currency, zero for those without).

    With spends sorted from highest (s1 ≥ s2 ≥ …), the cut of a tier whose cumulative share is p
    is s_k with k = ⌈p·n⌉: a spend ≥ s_k has fewer than k, so fewer than p·n, spends above it."""
    ordered = sorted(spends, reverse=True)
    n = len(ordered)
    if not n:
        return TierCuts(0, None, None, None)
    cuts = [
        ordered[int((share * n).to_integral_value(ROUND_CEILING)) - 1] for _, share in TIER_SHARES
    ]
    return TierCuts(n, *cuts)


def tier_of(spend: Decimal, cuts: TierCuts) -> Tier:
    """The tier of a customer's trailing net spend, given all customers' cut points."""
    if spend <= 0:
        return "bronze"
    for (tier, _), cut in zip(TIER_SHARES, (cuts.platinum, cuts.gold, cuts.silver), strict=True):
        if cut is not None and spend >= cut:
            return tier
    return "bronze"


# --- interests -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interest:
    key: str  # a SKU or a category
    weight: float  # views decayed to now, rounded to 4 places
    views: int
    last_viewed_at: datetime


@dataclass(frozen=True, slots=True)
class Interests:
    products: tuple[Interest, ...]
    categories: tuple[Interest, ...]


def category_of_url(url: str) -> str | None:
    """The category of a category page URL (`…/c/<slug>`, lower-cased), else None."""
    segments = [unquote(s) for s in urlsplit(url).path.split("/") if s]
    if len(segments) >= 2 and segments[0].lower() in CATEGORY_PATHS:
        return segments[1].strip().lower() or None
    return None


def interests(
    activity: Activity,
    now: datetime,
    *,
    category_of: Mapping[str, str] | None = None,
    limit: int = TOP,
) -> Interests:
    """The products and categories most viewed lately (see the module docstring)."""
    since = now - INTEREST_WINDOW
    products = {k: v for k, v in activity.product_views.items() if since <= v.at <= now}
    categories = {k: v for k, v in activity.category_views.items() if since <= v.at <= now}
    for sku, views in products.items():
        if (category := (category_of or {}).get(sku)) is not None:
            categories[category.lower()] = _merged(categories.get(category.lower()), views)
    return Interests(_top(products, now, limit), _top(categories, now, limit))


def _top(views: Mapping[str, Views], now: datetime, limit: int) -> tuple[Interest, ...]:
    ranked = [Interest(k, round(v.weight_at(now), 4), v.count, v.at) for k, v in views.items()]
    return tuple(sorted(ranked, key=lambda i: (-i.weight, -i.views, i.key))[:limit])


def _viewed(views: Mapping[str, Views], key: str | None, at: datetime) -> Mapping[str, Views]:
    if key is None:
        return views
    return {**views, key: _merged(views.get(key), Views(1.0, at, 1))}


def _merged(old: Views | None, new: Views) -> Views:
    """Both views together, their weights decayed to the later of their times (views may come
    out of `occurred_at` order)."""
    if old is None:
        return new
    at = max(old.at, new.at)
    return Views(old.weight_at(at) + new.weight_at(at), at, old.count + new.count)


def _decay(age: timedelta) -> float:
    return float(0.5 ** (age / INTEREST_HALF_LIFE))


def _bump(counts: dict[str, int], key: str, delta: int) -> None:
    value = counts.get(key, 0) + delta
    if value:
        counts[key] = value
    else:
        counts.pop(key, None)


def _day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()
