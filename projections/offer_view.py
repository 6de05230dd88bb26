"""What to offer, wired: the per-customer read model `offers` (rm_offers, sparse: only
`purchase.made`, `purchase.refunded` and `web.visited`) and the shared tables kept from it in the
projector's batch transaction, and the 360's `offers` and `segments` worked out from them at
read time. The rules are those of projections/offers.py.

Tables (all rebuilt by `crm replay offers`):

- rm_offers: one customer's `Activity` (orders, refunds, web views) and the names their orders
  gave each SKU, as JSON.
- rm_copurchase_items (sku → orders holding it, a name), rm_copurchase_pairs ((a, b) → orders
  holding both, both ways) and rm_copurchase_orders (N, one row): co-purchase counts over every
  customer's counted orders. They are sums of deltas (`offers.basket_change`: a new order adds
  its basket, the refund that makes it returned removes it), written only with the view row of
  the batch that applied the event for the first time (the view's version check), so each
  order is counted once. A count back at 0 may stay as a row: it reads as absent.
- rm_offer_spend: net spend (purchases - refunds) per customer, currency and UTC day, absolute;
  rm_tier_cuts: the cut points of each currency, recomputed from it every
  `CRM_TIER_REFRESH_SECONDS` by the projector's clock (services/offer_jobs.py).

Trailing 12-month net spend is by UTC day: the 365 days up to and including today. The tiers
of a currency compare every customer who ever spent in it (those without spend in the window
count as 0). A customer is judged in the currency of their largest trailing spend (ties: the
code first in sort order), or, with none in the window, that of their latest order or refund.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from projections import offers
from projections.offers import (
    MIN_SUPPORT,
    TOP,
    Activity,
    CoPurchases,
    Order,
    Refund,
    TierCuts,
    Views,
    goes_well_with,
    likely_next,
    owned,
    tier_of,
)
from projections.recorded import RecordedEvent, rfc3339
from projections.views import CustomerView, RowTable

OFFER_TYPES = frozenset({"purchase.made", "purchase.refunded", "web.visited"})
ITEMS_TABLE = "rm_copurchase_items"
PAIRS_TABLE = "rm_copurchase_pairs"
ORDERS_TABLE = "rm_copurchase_orders"
SPEND_TABLE = "rm_offer_spend"
TIER_CUTS_TABLE = "rm_tier_cuts"
WINDOW_DAYS = 365


@dataclass(frozen=True, slots=True)
class OfferState:
    customer_id: str
    version: int = 0
    position: int = 0
    activity: Activity = field(default_factory=Activity)
    names: Mapping[str, str] = field(default_factory=dict)
    order_docs: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    """The JSON of each order, built once when the order changes (never mutated): `to_json`
    runs for every batch that changes the customer, and most orders did not change."""
    counted: frozenset[str] = frozenset()
    """The ids of the orders in the co-purchase counts (not returned)."""


def apply_own(state: OfferState | None, event: RecordedEvent) -> OfferState:
    """Fold one event of OFFER_TYPES (the versions it skips are the customer's other events)."""
    envelope = event.envelope
    if state is None:
        state = OfferState(envelope.customer_id)
    if event.version <= state.version:
        return state
    moved = replace(state, version=event.version, position=event.position)
    if envelope.type not in OFFER_TYPES:
        return moved
    names = state.names
    if (
        envelope.type == "purchase.made"
        and envelope.payload["order_id"] not in moved.activity.orders
    ):
        given = {i["sku"]: i["name"] for i in envelope.payload["items"] if i.get("name")}
        names = {**names, **given} if given else names
    activity = offers.apply(state.activity, event)
    docs = state.order_docs
    if envelope.type != "web.visited":
        order_id = envelope.payload["order_id"]
        order = activity.orders.get(order_id)
        if order is not None and order is not state.activity.orders.get(order_id):
            docs = {**docs, order_id: _order_json(order)}
            counted = state.counted - {order_id} if order.returned else state.counted | {order_id}
            return replace(moved, activity=activity, names=names, order_docs=docs, counted=counted)
    return replace(moved, activity=activity, names=names)


def _order_json(o: Order) -> dict[str, Any]:
    return {
        "at": rfc3339(o.at),
        "skus": sorted(o.skus),
        "total": f"{o.total:f}",
        "currency": o.currency,
        "refunded": f"{o.refunded:f}",
    }


# --- JSON ------------------------------------------------------------------------------------


def to_json(state: OfferState) -> dict[str, Any]:
    a = state.activity
    return {
        "customer_id": state.customer_id,
        "version": state.version,
        "position": state.position,
        "orders": dict(sorted(state.order_docs.items())),
        "refunds": [
            {"at": rfc3339(r.at), "amount": f"{r.amount:f}", "currency": r.currency}
            for r in a.refunds
        ],
        "product_views": _views_json(a.product_views),
        "category_views": _views_json(a.category_views),
        "names": dict(sorted(state.names.items())),
    }


def from_json(doc: dict[str, Any]) -> OfferState:
    activity = Activity(
        orders={
            i: Order(
                i,
                _time(o["at"]),
                frozenset(o["skus"]),
                Decimal(o["total"]),
                o["currency"],
                Decimal(o["refunded"]),
            )
            for i, o in doc["orders"].items()
        },
        refunds=tuple(
            Refund(_time(r["at"]), Decimal(r["amount"]), r["currency"]) for r in doc["refunds"]
        ),
        product_views=_views_from(doc["product_views"]),
        category_views=_views_from(doc["category_views"]),
    )
    counted = frozenset(i for i, o in activity.orders.items() if not o.returned)
    return OfferState(
        doc["customer_id"], doc["version"], doc["position"], activity, doc["names"], doc["orders"],
        counted,
    )  # fmt: skip


def _views_json(views: Mapping[str, Views]) -> dict[str, Any]:
    return {k: [v.weight, rfc3339(v.at), v.count] for k, v in sorted(views.items())}


def _views_from(doc: dict[str, Any]) -> dict[str, Views]:
    return {k: Views(weight, _time(at), count) for k, (weight, at, count) in doc.items()}


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- the shared tables -----------------------------------------------------------------------


def basket_deltas(before: OfferState | None, after: OfferState) -> list[tuple[frozenset[str], int]]:
    """The baskets counted in (+1: new orders) and out (-1: orders returned) between two states
    of one customer: the sum of `offers.basket_change` over the events in between."""
    old = frozenset() if before is None else before.counted
    orders = after.activity.orders
    added = [(orders[i].skus, 1) for i in sorted(after.counted - old)]
    return added + [(orders[i].skus, -1) for i in sorted(old - after.counted)]


def item_rows(before: OfferState | None, after: OfferState) -> list[tuple[Any, ...]]:
    deltas: dict[str, int] = {}
    for skus, delta in basket_deltas(before, after):
        for sku in skus:
            deltas[sku] = deltas.get(sku, 0) + delta
    return [(s, d, after.names.get(s)) for s, d in sorted(deltas.items()) if d]


def pair_rows(before: OfferState | None, after: OfferState) -> list[tuple[Any, ...]]:
    deltas: dict[tuple[str, str], int] = {}
    for skus, delta in basket_deltas(before, after):
        for a in skus:
            for b in skus - {a}:
                deltas[a, b] = deltas.get((a, b), 0) + delta
    return [(a, b, d) for (a, b), d in sorted(deltas.items()) if d]


def order_rows(before: OfferState | None, after: OfferState) -> list[tuple[Any, ...]]:
    delta = sum(d for _, d in basket_deltas(before, after))
    return [(delta,)] if delta else []


def daily_spend(activity: Activity) -> dict[tuple[str, date], Decimal]:
    """Net spend by (currency, UTC day)."""
    spend: dict[tuple[str, date], Decimal] = {}
    moves = [(o.at, o.total, o.currency) for o in activity.orders.values()]
    moves += [(r.at, -r.amount, r.currency) for r in activity.refunds]
    for at, amount, currency in moves:
        key = (currency, at.astimezone(UTC).date())
        spend[key] = spend.get(key, Decimal(0)) + amount
    return spend


def spend_rows(before: OfferState | None, after: OfferState) -> list[tuple[Any, ...]]:
    old = {} if before is None else daily_spend(before.activity)
    new = daily_spend(after.activity)
    return [
        (after.customer_id, currency, day, amount)
        for (currency, day), amount in sorted(new.items())
        if old.get((currency, day)) != amount
    ]


_CREATE_COUNTS_SQL = f"""
CREATE TABLE IF NOT EXISTS {ITEMS_TABLE} (sku text PRIMARY KEY, orders bigint NOT NULL, name text);
CREATE TABLE IF NOT EXISTS {PAIRS_TABLE} (
    a text NOT NULL, b text NOT NULL, together bigint NOT NULL, PRIMARY KEY (a, b));
CREATE TABLE IF NOT EXISTS {ORDERS_TABLE} (id int PRIMARY KEY, orders bigint NOT NULL)
"""
_UPSERT_ITEMS_SQL = f"""
INSERT INTO {ITEMS_TABLE} AS t (sku, orders, name)
SELECT sku, sum(d), min(name) FROM unnest(%s::text[], %s::bigint[], %s::text[]) AS u(sku, d, name)
GROUP BY sku ORDER BY sku
ON CONFLICT (sku) DO UPDATE SET orders = t.orders + excluded.orders,
    name = LEAST(t.name, excluded.name)
"""
"""Summed over the batch's customers first (a statement may touch a row once), in key order.
The name kept is the least of those a SKU was sold under: the same whatever the order."""
_UPSERT_PAIRS_SQL = f"""
INSERT INTO {PAIRS_TABLE} AS t (a, b, together)
SELECT a, b, sum(d) FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS u(a, b, d)
GROUP BY a, b ORDER BY a, b
ON CONFLICT (a, b) DO UPDATE SET together = t.together + excluded.together
"""
_UPSERT_ORDERS_SQL = f"""
INSERT INTO {ORDERS_TABLE} AS t (id, orders) SELECT 1, sum(d) FROM unnest(%s::bigint[]) AS u(d)
ON CONFLICT (id) DO UPDATE SET orders = t.orders + excluded.orders
"""
_CREATE_SPEND_SQL = f"""
CREATE TABLE IF NOT EXISTS {SPEND_TABLE} (
    customer_id text NOT NULL, currency text NOT NULL, day date NOT NULL, net numeric NOT NULL,
    PRIMARY KEY (customer_id, currency, day));
CREATE TABLE IF NOT EXISTS {TIER_CUTS_TABLE} (
    currency text PRIMARY KEY, customers int NOT NULL, platinum numeric, gold numeric,
    silver numeric, window_end date NOT NULL, computed_at timestamptz NOT NULL)
"""
_UPSERT_SPEND_SQL = f"""
INSERT INTO {SPEND_TABLE} AS t (customer_id, currency, day, net)
SELECT * FROM unnest(%s::text[], %s::text[], %s::date[], %s::numeric[])
ON CONFLICT (customer_id, currency, day) DO UPDATE SET net = excluded.net
"""

COPURCHASE_ITEMS = RowTable(
    "copurchase_items", _CREATE_COUNTS_SQL, _UPSERT_ITEMS_SQL, item_rows, additive=True
)
COPURCHASE_PAIRS = RowTable(
    "copurchase_pairs", _CREATE_COUNTS_SQL, _UPSERT_PAIRS_SQL, pair_rows, additive=True
)
COPURCHASE_ORDERS = RowTable(
    "copurchase_orders", _CREATE_COUNTS_SQL, _UPSERT_ORDERS_SQL, order_rows, additive=True
)
OFFER_SPEND = RowTable("offer_spend", _CREATE_SPEND_SQL, _UPSERT_SPEND_SQL, spend_rows)

OFFERS: CustomerView[OfferState] = CustomerView(
    "offers",
    apply_own,
    to_json,
    from_json,
    types=OFFER_TYPES,
    tables=(COPURCHASE_ITEMS, COPURCHASE_PAIRS, COPURCHASE_ORDERS, OFFER_SPEND),
)
"""The read model for the projector: table rm_offers and the tables above. Table order is
lock order: every projector locks the shared rows in the same order."""

_SHARES = ", ".join(
    f"max(net) FILTER (WHERE k = ceil(n * {share}))" for _, share in offers.TIER_SHARES
)
TIER_CUTS_SQL = f"""
WITH spend AS (
    SELECT currency, customer_id,
        coalesce(sum(net) FILTER (WHERE day > %(since)s AND day <= %(today)s), 0) AS net
    FROM {SPEND_TABLE} GROUP BY currency, customer_id),
ranked AS (
    SELECT currency, net, count(*) OVER w AS n, row_number() OVER (w ORDER BY net DESC) AS k
    FROM spend WINDOW w AS (PARTITION BY currency))
INSERT INTO {TIER_CUTS_TABLE} (currency, customers, platinum, gold, silver, window_end,
    computed_at)
SELECT currency, max(n), {_SHARES}, %(today)s, %(now)s FROM ranked GROUP BY currency
"""
"""`offers.tier_cuts` in SQL, for each currency: with spends sorted from highest, the cut of a
tier of cumulative share p is the k-th spend, k = ⌈p·n⌉. Run after deleting the old cuts."""


def tier_window(now: datetime) -> tuple[date, date]:
    """(since, today): the trailing window is the days after `since` up to `today` (UTC)."""
    today = now.astimezone(UTC).date()
    return today - timedelta(days=WINDOW_DAYS), today


def combine(survivor: OfferState, merged: Iterable[OfferState]) -> OfferState:
    """The survivor's activity with that of the customers merged into it (read-time merges,
    projections/merge_index.py): their orders (keyed `customer/order`, ids being unique per
    customer only), refunds and views, so that what they have, buy again and look at counts
    for the survivor. Names known to the survivor win."""
    state = survivor
    for other in merged:
        a, b = state.activity, other.activity
        orders = {f"{other.customer_id}/{i}": o for i, o in b.orders.items()}
        activity = Activity(
            orders={**a.orders, **orders},
            refunds=(*a.refunds, *b.refunds),
            product_views=_views_added(a.product_views, b.product_views),
            category_views=_views_added(a.category_views, b.category_views),
        )
        state = replace(state, activity=activity, names={**other.names, **state.names})
    return state


def _views_added(a: Mapping[str, Views], b: Mapping[str, Views]) -> dict[str, Views]:
    """Views of the same key added up, decayed to the later of their times."""
    added = dict(a)
    for key, theirs in b.items():
        ours = added.get(key)
        if ours is None:
            added[key] = theirs
            continue
        at = max(ours.at, theirs.at)
        weight = ours.weight_at(at) + theirs.weight_at(at)
        added[key] = Views(weight, at, ours.count + theirs.count)
    return added


# --- read time: the 360's "offers" and "segments" --------------------------------------------

EMPTY_OFFERS: dict[str, Any] = {"goes_well_with": [], "likely_next": []}


def owned_skus(state: OfferState | None) -> list[str]:
    return [] if state is None else sorted(owned(state.activity))


PAIRS_SQL = f"""
WITH n AS (SELECT o.orders FROM {ORDERS_TABLE} o WHERE o.id = 1),
best AS (
    SELECT DISTINCT ON (p.b) p.a, p.b, p.together, ia.orders AS n_a, ib.orders AS n_b, ib.name,
        (n.orders * p.together)::float8 / (ia.orders * ib.orders)::float8 AS lift
    FROM {PAIRS_TABLE} p JOIN {ITEMS_TABLE} ia ON ia.sku = p.a
    JOIN {ITEMS_TABLE} ib ON ib.sku = p.b CROSS JOIN n
    WHERE p.a = ANY(%(have)s::text[]) AND NOT p.b = ANY(%(have)s::text[])
        AND p.together >= %(min_support)s AND ia.orders > 0 AND ib.orders > 0
        AND n.orders * p.together > ia.orders * ib.orders
    ORDER BY p.b, lift DESC, p.together DESC, p.a COLLATE "C")
SELECT a, b, together, n_a, n_b, name, (SELECT orders FROM n) FROM best
ORDER BY lift DESC, together DESC, b COLLATE "C", a COLLATE "C" LIMIT %(limit)s
"""
"""The rows `goes_well_with` picks for a customer who has `have`, at most `limit`: for each
candidate B (not had, lift > 1, enough support) its best pair, ranked as `goes_well_with` ranks
(lift as the same float division, ties by n(A,B), then SKU and A in code-point order), with
n(A), n(B), B's name and N. The selection happens here, next to the rows, so that a request
reads 5 rows instead of every pair of what the customer has; `offers_of` applies
`goes_well_with` to them, which gives the same answer as to all the pairs."""


def pairs_params(have: Sequence[str]) -> dict[str, Any]:
    """The parameters of PAIRS_SQL for a customer who has `have`."""
    return {"have": list(have), "min_support": MIN_SUPPORT, "limit": TOP}


CUTS_JSON_SQL = (
    "(SELECT json_object_agg(t.currency, json_build_array(t.customers, t.platinum::text, "
    f"t.gold::text, t.silver::text, t.computed_at)) FROM {TIER_CUTS_TABLE} t)"
)
"""Every currency's cut points as one JSON object (a row per currency: a small table)."""


def co_purchases(pairs: Iterable[Sequence[Any]]) -> tuple[CoPurchases, dict[str, str]]:
    """The counts in the rows of PAIRS_SQL, and the names of the B products."""
    counts, names = CoPurchases(), {}
    for a, b, together, n_a, n_b, name, n in pairs:
        counts.orders = int(n or 0)
        counts.products[a], counts.products[b] = int(n_a), int(n_b)
        counts.pairs.setdefault(a, {})[b] = int(together)
        names[b] = name
    return counts, names


def offers_of(
    state: OfferState | None, pairs: Iterable[Sequence[Any]], now: datetime
) -> dict[str, Any]:
    """The 360's "offers": goes well with (from the rows of PAIRS_SQL) and likely next."""
    if state is None:
        return {"goes_well_with": [], "likely_next": []}
    counts, names = co_purchases(pairs)
    suggestions = goes_well_with(owned(state.activity), counts)
    return {
        "goes_well_with": [
            {
                "sku": s.sku,
                "name": names.get(s.sku),
                "score": round(s.lift, 4),
                "together": s.together,
                "because": s.because,
            }
            for s in suggestions
        ],
        "likely_next": [
            {
                "sku": r.sku,
                "name": state.names.get(r.sku),
                "interval_days": r.interval_days,
                "last_on": r.last_on.isoformat(),
                "expected_at": r.expected_on.isoformat(),
                "due": r.due,
            }
            for r in likely_next(state.activity, now)
        ],
    }


def trailing_spend(activity: Activity, now: datetime) -> dict[str, Decimal]:
    """Net spend by currency over the trailing window, by UTC day (as the cut points)."""
    since, today = tier_window(now)
    spend: dict[str, Decimal] = {}
    for (currency, day), amount in daily_spend(activity).items():
        if since < day <= today:
            spend[currency] = spend.get(currency, Decimal(0)) + amount
    return spend


def main_currency(activity: Activity, now: datetime) -> str | None:
    spend = trailing_spend(activity, now)
    if spend:
        return min(spend, key=lambda c: (-spend[c], c))
    moves = [(o.at, o.currency) for o in activity.orders.values()]
    moves += [(r.at, r.currency) for r in activity.refunds]
    return max(moves)[1] if moves else None


def segments_of(
    state: OfferState | None, cuts: Mapping[str, Sequence[Any]] | None, now: datetime
) -> dict[str, Any]:
    """The 360's "segments": the value tier (null without spend or before the cut points of the
    customer's currency are computed) and the interests."""
    if state is None:
        return {"tier": None, "net_spend_12m": None, "tier_cuts_at": None,
                "interests": {"products": [], "categories": []}}  # fmt: skip
    currency = main_currency(state.activity, now)
    tier, cuts_at, net = None, None, None
    if currency is not None:
        amount = trailing_spend(state.activity, now).get(currency, Decimal(0))
        net = {"currency": currency, "amount": f"{amount:f}"}
        row = (cuts or {}).get(currency)
        if row is not None:
            customers, platinum, gold, silver, cuts_at = row
            tier = tier_of(
                amount, TierCuts(customers, *(_decimal(c) for c in (platinum, gold, silver)))
            )
    found = offers.interests(state.activity, now)
    return {
        "tier": tier,
        "net_spend_12m": net,
        "tier_cuts_at": cuts_at,
        "interests": {
            "products": [_interest("sku", i) for i in found.products],
            "categories": [_interest("category", i) for i in found.categories],
        },
    }


def _interest(key: str, interest: offers.Interest) -> dict[str, Any]:
    return {key: interest.key, "weight": interest.weight, "views": interest.views,
            "last_viewed_at": rfc3339(interest.last_viewed_at)}  # fmt: skip


def _decimal(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)
