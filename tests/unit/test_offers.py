"""What to offer: co-purchase lift on a catalog whose pattern is known by construction,
repurchase intervals, value-tier cut points at their boundaries, and recent interests."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from random import Random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projections.offers import (
    Activity,
    BasketChange,
    CoPurchases,
    Repurchase,
    TierCuts,
    apply,
    basket_change,
    category_of_url,
    goes_well_with,
    interests,
    likely_next,
    median_days,
    owned,
    tier_cuts,
    tier_of,
    trailing_net_spend,
)
from projections.recorded import RecordedEvent, from_wire
from tests.unit.examples import envelope

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
_versions = itertools.count(1)


def recorded(type_: str, payload: dict[str, Any], at: datetime = NOW) -> RecordedEvent:
    version = next(_versions)
    data = envelope(type_, payload, event_id=str(uuid.uuid4()), occurred_at=at.isoformat())
    return from_wire(data | {"position": version, "version": version})


def purchase(
    order_id: str, *skus: str, total: str = "10.00", currency: str = "EUR"
) -> dict[str, Any]:
    items = [{"sku": sku, "quantity": 1, "unit_price": "1.00"} for sku in skus]
    return {"order_id": order_id, "items": items, "total": total, "currency": currency}


def refund(order_id: str, amount: str, currency: str = "EUR") -> dict[str, Any]:
    return {"order_id": order_id, "amount": amount, "currency": currency}


def fold(events: Iterable[RecordedEvent]) -> Activity:
    activity = Activity()
    for event in events:
        activity = apply(activity, event)
    return activity


def counts_of(baskets: Iterable[Iterable[str]]) -> CoPurchases:
    counts = CoPurchases()
    for basket in baskets:
        counts.apply(BasketChange(frozenset(basket), 1))
    return counts


# --- goes well with: a catalog whose co-purchase pattern is known by construction ---------

CAMERA_SHOP = (
    [{"CAM", "SD"}] * 4
    + [{"CAM", "BAG"}] * 3
    + [{"CAM", "TRI"}]
    + [{"LAP", "MOU"}] * 3
    + [{"SD"}] * 2
)
# N = 13 orders; n(CAM) = 8, n(SD) = 6, n(BAG) = 3, n(TRI) = 1, n(LAP) = 3, n(MOU) = 3.
# lift(CAM, BAG) = 13·3 / (8·3) = 39/24 = 1.625;  lift(CAM, SD) = 13·4 / (8·6) = 52/48;
# lift(CAM, TRI) = 13·1 / (8·1) = 1.625 but only one order holds both (support 1 < 3);
# lift(LAP, MOU) = 13·3 / (3·3) = 39/9.


def test_the_counts_hold_orders_products_and_pairs() -> None:
    counts = counts_of(CAMERA_SHOP)

    assert counts.orders == 13
    assert counts.products == {"CAM": 8, "SD": 6, "BAG": 3, "TRI": 1, "LAP": 3, "MOU": 3}
    assert (counts.together("CAM", "SD"), counts.together("SD", "CAM")) == (4, 4)
    assert counts.lift("LAP", "MOU") == pytest.approx(39 / 9)
    assert counts.lift("CAM", "LAP") == 0.0


def test_a_camera_buyer_is_offered_the_bag_first_by_lift_and_never_the_rare_tripod() -> None:
    offers = goes_well_with({"CAM"}, counts_of(CAMERA_SHOP))

    assert [(o.sku, o.because, o.together) for o in offers] == [
        ("BAG", "CAM", 3),
        ("SD", "CAM", 4),
    ]
    assert offers[0].lift == pytest.approx(39 / 24)
    assert offers[1].lift == pytest.approx(52 / 48)


def test_what_the_customer_has_is_not_offered() -> None:
    offers = goes_well_with({"CAM", "SD"}, counts_of(CAMERA_SHOP))

    assert [o.sku for o in offers] == ["BAG"]


def test_a_lower_minimum_support_lets_the_rare_pair_in() -> None:
    offers = goes_well_with({"CAM"}, counts_of(CAMERA_SHOP), min_support=1)

    # TRI and BAG tie at 1.625; BAG was bought with CAM more often
    assert [o.sku for o in offers] == ["BAG", "TRI", "SD"]


def test_a_product_in_every_basket_has_lift_one_and_is_not_offered() -> None:
    # N = 6, n(A) = 3, n(BOX) = 6, n(A, BOX) = 3: lift = 6·3 / (3·6) = 1
    counts = counts_of([{"A", "BOX"}] * 3 + [{"BOX"}] * 3)

    assert counts.lift("A", "BOX") == pytest.approx(1.0)
    assert goes_well_with({"A"}, counts) == []


def test_at_most_five_suggestions_best_first() -> None:
    # A is bought with P1..P7, each 3 times; Pi is also bought alone i times, so
    # lift(A, Pi) = N·3 / (21·(3 + i)) falls as i grows; 50 unrelated orders keep it above 1.
    baskets: list[set[str]] = [{"Z"}] * 50
    for i in range(1, 8):
        baskets += [{"A", f"P{i}"}] * 3 + [{f"P{i}"}] * i

    offers = goes_well_with({"A"}, counts_of(baskets))

    assert [o.sku for o in offers] == ["P1", "P2", "P3", "P4", "P5"]
    n = len(baskets)
    assert [o.lift for o in offers] == pytest.approx([n * 3 / (21 * (3 + i)) for i in range(1, 6)])


def test_a_customer_with_nothing_gets_no_suggestion() -> None:
    assert goes_well_with(set(), counts_of(CAMERA_SHOP)) == []


def test_removing_a_basket_never_counted_fails_and_changes_nothing() -> None:
    counts = counts_of([{"A", "B"}])

    with pytest.raises(ValueError, match="not counted"):
        counts.apply(BasketChange(frozenset({"A", "C"}), -1))

    assert (counts.orders, counts.products) == (1, {"A": 1, "B": 1})


baskets_strategy = st.lists(
    st.frozensets(st.sampled_from("ABCDEF"), min_size=1, max_size=4), max_size=25
)


@given(baskets_strategy, st.data())
def test_removing_baskets_gives_the_counts_of_the_others(
    baskets: list[frozenset[str]], data: st.DataObject
) -> None:
    removed = data.draw(st.lists(st.booleans(), min_size=len(baskets), max_size=len(baskets)))
    counts = counts_of(baskets)
    for basket, out in zip(baskets, removed, strict=True):
        if out:
            counts.apply(BasketChange(basket, -1))

    expected = counts_of(b for b, out in zip(baskets, removed, strict=True) if not out)
    assert (counts.orders, counts.products, counts.pairs) == (
        expected.orders,
        expected.products,
        expected.pairs,
    )


@given(baskets_strategy)
def test_lift_is_the_share_together_over_the_product_of_the_shares(
    baskets: list[frozenset[str]],
) -> None:
    counts = counts_of(baskets)
    n = len(baskets)
    for a, b in itertools.permutations("ABCDEF", 2):
        n_a = sum(a in basket for basket in baskets)
        n_b = sum(b in basket for basket in baskets)
        n_ab = sum(a in basket and b in basket for basket in baskets)
        expected = (n_ab / n) / ((n_a / n) * (n_b / n)) if n_a and n_b else 0.0
        assert counts.together(a, b) == n_ab
        assert counts.lift(a, b) == pytest.approx(expected)


# --- orders, refunds and the basket changes they make --------------------------------------


def test_a_new_order_adds_its_basket_and_a_resend_of_it_changes_nothing() -> None:
    first = recorded("purchase.made", purchase("O-1", "A", "B", "A"))
    activity = fold([first])
    resend = recorded("purchase.made", purchase("O-1", "C"))

    assert basket_change(Activity(), first) == BasketChange(frozenset({"A", "B"}), 1)
    assert basket_change(activity, resend) is None
    assert apply(activity, resend) == activity


def test_an_order_leaves_the_counts_only_when_refunds_reach_its_total() -> None:
    events = [
        recorded("purchase.made", purchase("O-1", "A", "B", total="100.00")),
        recorded("purchase.refunded", refund("O-1", "40")),
        recorded("purchase.refunded", refund("O-1", "60.00")),
        recorded("purchase.refunded", refund("O-1", "5")),
    ]
    changes, activity = [], Activity()
    for event in events:
        changes.append(basket_change(activity, event))
        activity = apply(activity, event)

    assert changes == [
        BasketChange(frozenset({"A", "B"}), 1),
        None,
        BasketChange(frozenset({"A", "B"}), -1),
        None,
    ]
    assert owned(activity) == frozenset()


def test_a_refund_in_another_currency_or_of_an_unknown_order_returns_nothing() -> None:
    made = recorded("purchase.made", purchase("O-1", "A", total="10"))
    activity = fold([made])

    for event in (
        recorded("purchase.refunded", refund("O-1", "10", "USD")),
        recorded("purchase.refunded", refund("O-9", "10")),
    ):
        assert basket_change(activity, event) is None
        assert owned(apply(activity, event)) == {"A"}


def test_a_customer_has_the_skus_of_their_orders_not_returned() -> None:
    activity = fold(
        [
            recorded("purchase.made", purchase("O-1", "A", "B", total="10")),
            recorded("purchase.made", purchase("O-2", "C", total="10")),
            recorded("purchase.refunded", refund("O-2", "10")),
            recorded("purchase.refunded", refund("O-1", "9.99")),
        ]
    )

    assert owned(activity) == {"A", "B"}


def test_counts_kept_from_several_customers_events_drive_the_suggestions() -> None:
    counts = CoPurchases()
    customers: dict[str, Activity] = {}
    histories = {f"C-{i}": [purchase(f"O-{i}", "CAM", "BAG")] for i in range(3)}
    histories["C-3"] = [purchase("O-3", "CAM")]
    histories["C-5"] = [purchase("O-5", "MUG")]
    histories["C-4"] = [purchase("O-4", "CAM", "SD", total="50"), refund("O-4", "50")]
    for customer, payloads in histories.items():
        for payload in payloads:
            type_ = "purchase.refunded" if "amount" in payload else "purchase.made"
            event = recorded(type_, payload)
            change = basket_change(customers.get(customer), event)
            if change is not None:
                counts.apply(change)
            customers[customer] = apply(customers.get(customer), event)

    # counted: 3 x {CAM, BAG}, {CAM}, {MUG}; the returned {CAM, SD} left: N = 5
    assert (counts.orders, counts.products) == (5, {"CAM": 4, "BAG": 3, "MUG": 1})
    (offer,) = goes_well_with(owned(customers["C-3"]), counts)
    assert (offer.sku, offer.because, offer.together) == ("BAG", "CAM", 3)
    assert offer.lift == pytest.approx(5 * 3 / (4 * 3))
    assert goes_well_with(owned(customers["C-4"]), counts) == []  # has nothing: returned it


# --- likely next purchase ------------------------------------------------------------------


def on(day: date, hour: int = 10) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def bought(sku: str, *days: date) -> list[RecordedEvent]:
    return [recorded("purchase.made", purchase(f"{sku}-{d}", sku), on(d)) for d in days]


def test_a_product_bought_every_30_days_is_expected_30_days_after_the_last() -> None:
    activity = fold(bought("BEANS", date(2026, 3, 1), date(2026, 3, 31), date(2026, 4, 30)))

    assert likely_next(activity, on(date(2026, 5, 10))) == [
        Repurchase("BEANS", 3, 30, date(2026, 4, 30), date(2026, 5, 30), due=True)
    ]


def test_the_usual_interval_is_the_median_gap_so_one_skipped_cycle_does_not_move_it() -> None:
    days = [date(2026, 1, 1), date(2026, 1, 11), date(2026, 1, 31), date(2026, 2, 10)]
    # gaps 10, 20, 10: median 10
    (found,) = likely_next(fold(bought("FILTER", *days)), on(date(2026, 2, 12)))

    assert (found.interval_days, found.expected_on) == (10, date(2026, 2, 20))


@pytest.mark.parametrize(
    ("gaps", "median"), [([10, 20], 15), ([10, 11], 11), ([9, 10], 10), ([7], 7), ([3, 9, 4], 4)]
)
def test_the_median_of_an_even_count_is_the_mean_of_the_middle_rounded_half_up(
    gaps: list[int], median: int
) -> None:
    assert median_days(gaps) == median


def test_fewer_than_three_purchase_days_is_no_habit_unless_asked() -> None:
    activity = fold(bought("BEANS", date(2026, 5, 1), date(2026, 5, 15)))

    assert likely_next(activity, NOW) == []
    assert [r.expected_on for r in likely_next(activity, NOW, min_purchases=2)] == [
        date(2026, 5, 29)
    ]


def test_orders_on_one_day_are_one_purchase_and_returned_orders_do_not_count() -> None:
    events = bought("TEA", date(2026, 5, 1), date(2026, 5, 8), date(2026, 5, 15))
    events.append(recorded("purchase.made", purchase("X", "TEA"), on(date(2026, 5, 15), 18)))
    events.append(recorded("purchase.made", purchase("R", "TEA"), on(date(2026, 5, 22))))
    events.append(recorded("purchase.refunded", refund("R", "10.00"), on(date(2026, 5, 23))))

    (found,) = likely_next(fold(events), on(date(2026, 5, 24)))

    assert (found.days, found.interval_days, found.last_on) == (3, 7, date(2026, 5, 15))


def test_due_ones_come_first_then_by_expected_date() -> None:
    events = (
        bought("LATE", date(2026, 2, 19), date(2026, 4, 5), date(2026, 5, 20))  # 45 days: 07-04
        + bought("SOON", date(2026, 5, 11), date(2026, 5, 21), date(2026, 5, 31))  # 06-10
        + bought("EDGE", date(2026, 4, 2), date(2026, 5, 2), date(2026, 6, 1))  # 07-01
        + bought("PAST", date(2026, 5, 1), date(2026, 5, 11), date(2026, 5, 21))  # 05-31
    )

    found = likely_next(fold(events), on(date(2026, 6, 1)))

    assert [(r.sku, r.expected_on, r.due) for r in found] == [
        ("PAST", date(2026, 5, 31), True),  # overdue: due
        ("SOON", date(2026, 6, 10), True),
        ("EDGE", date(2026, 7, 1), True),
        ("LATE", date(2026, 7, 4), False),
    ]


def test_due_means_expected_within_30_days_of_today() -> None:
    thirty = bought("A", date(2026, 4, 1), date(2026, 5, 1), date(2026, 5, 31))  # 06-30
    thirty_one = bought("B", date(2026, 3, 30), date(2026, 4, 30), date(2026, 5, 31))  # 07-01

    found = likely_next(fold(thirty + thirty_one), on(date(2026, 5, 31), 23))

    assert [(r.sku, r.interval_days, r.due) for r in found] == [("A", 30, True), ("B", 31, False)]


def test_a_habit_two_intervals_past_its_date_has_lapsed() -> None:
    activity = fold(bought("A", date(2026, 1, 1), date(2026, 1, 11), date(2026, 1, 21)))  # → 01-31

    assert likely_next(activity, on(date(2026, 2, 20)))  # 20 days = two intervals past: kept
    assert likely_next(activity, on(date(2026, 2, 21))) == []


# --- value tier ----------------------------------------------------------------------------

HUNDRED = [Decimal(i) for i in range(1, 101)]


def test_cut_points_of_a_hundred_customers() -> None:
    # from the top: 5th spend 96, 20th 81, 50th 51
    assert tier_cuts(reversed(HUNDRED)) == TierCuts(100, Decimal(96), Decimal(81), Decimal(51))


@pytest.mark.parametrize(
    ("spend", "tier"),
    [
        (100, "platinum"), (96, "platinum"),  # 4 customers above: 4% < 5%
        (95, "gold"), (81, "gold"),  # 5 above: not < 5%; 19 above: 19% < 20%
        (80, "silver"), (51, "silver"),  # 20 above; 49 above
        (50, "bronze"), (1, "bronze"),  # 50 above: not < 50%
        ("96.5", "platinum"), ("95.99", "gold"), ("50.99", "bronze"),
    ],
)  # fmt: skip
def test_tiers_at_the_boundaries(spend: int | str, tier: str) -> None:
    assert tier_of(Decimal(spend), tier_cuts(HUNDRED)) == tier


def test_ten_customers_give_one_platinum_one_gold_three_silver() -> None:
    cuts = tier_cuts(Decimal(i) for i in range(1, 11))

    tiers = [tier_of(Decimal(i), cuts) for i in range(10, 0, -1)]

    assert tiers == ["platinum", "gold"] + ["silver"] * 3 + ["bronze"] * 5


def test_ties_at_a_cut_go_up() -> None:
    assert {tier_of(Decimal(100), tier_cuts([Decimal(100)] * 10))} == {"platinum"}


@pytest.mark.parametrize("spend", ["0", "-20"])
def test_no_net_spend_is_bronze_whatever_the_others_spend(spend: str) -> None:
    assert tier_of(Decimal(spend), tier_cuts([Decimal(0)] * 10)) == "bronze"


def test_with_no_customers_to_compare_with_everyone_is_bronze() -> None:
    assert tier_of(Decimal(1000), tier_cuts([])) == "bronze"


@given(st.lists(st.integers(0, 50).map(Decimal), min_size=1, max_size=60))
def test_the_tier_follows_the_share_of_customers_spending_strictly_more(
    spends: list[Decimal],
) -> None:
    cuts = tier_cuts(spends)
    for spend in spends:
        above = Decimal(sum(other > spend for other in spends)) / len(spends)
        if spend <= 0:
            expected = "bronze"
        elif above < Decimal("0.05"):
            expected = "platinum"
        elif above < Decimal("0.20"):
            expected = "gold"
        elif above < Decimal("0.50"):
            expected = "silver"
        else:
            expected = "bronze"
        assert tier_of(spend, cuts) == expected


def test_trailing_net_spend_is_the_365_days_up_to_now_by_currency() -> None:
    activity = fold(
        [
            recorded("purchase.made", purchase("O-1", "A", total="100"), NOW - timedelta(days=365)),
            recorded(
                "purchase.made", purchase("O-2", "A", total="80.50"), NOW - timedelta(days=364)
            ),
            recorded("purchase.made", purchase("O-3", "A", total="20", currency="USD"), NOW),
            recorded("purchase.refunded", refund("O-1", "30"), NOW - timedelta(days=10)),
            recorded("purchase.made", purchase("O-4", "A", total="5"), NOW + timedelta(seconds=1)),
        ]
    )

    assert trailing_net_spend(activity, NOW) == {"EUR": Decimal("50.50"), "USD": Decimal(20)}


# --- interests -----------------------------------------------------------------------------


def visit(url: str, at: datetime, sku: str | None = None) -> RecordedEvent:
    payload = {"url": url} if sku is None else {"url": url, "product_sku": sku}
    return recorded("web.visited", payload, at)


@pytest.mark.parametrize(
    ("url", "category"),
    [
        ("https://shop.example.com/c/phones", "phones"),
        ("https://shop.example.com/C/Phones/", "phones"),
        ("https://shop.example.com/category/home%20audio?sort=price", "home audio"),
        ("/categories/coffee/beans", "coffee"),
        ("https://shop.example.com/p/lap-14", None),
        ("https://shop.example.com/", None),
        ("https://shop.example.com/c/", None),
    ],
)
def test_the_category_comes_from_a_category_page_url(url: str, category: str | None) -> None:
    assert category_of_url(url) == category


def test_a_view_weighs_half_as_much_every_14_days() -> None:
    activity = fold(
        [
            visit("/p/a", NOW, "A"),
            visit("/p/b", NOW - timedelta(days=14), "B"),
            visit("/p/c", NOW - timedelta(days=28), "C"),
            visit("/p/c", NOW - timedelta(days=28), "C"),
            visit("/p/c", NOW - timedelta(days=28), "C"),
        ]
    )

    found = interests(activity, NOW).products

    # C: 3 x 0.25 = 0.75 < A: 1 = 2 x B: 2 x 0.5
    assert [(i.key, i.weight, i.views) for i in found] == [
        ("A", 1.0, 1),
        ("C", 0.75, 3),
        ("B", 0.5, 1),
    ]


def test_only_what_was_viewed_in_the_last_90_days_shows() -> None:
    activity = fold(
        [visit("/p/a", NOW - timedelta(days=91), "A"), visit("/c/tv", NOW - timedelta(days=90))]
    )

    found = interests(activity, NOW)

    assert (found.products, [c.key for c in found.categories]) == ((), ["tv"])


def test_product_views_count_for_their_category_when_the_map_is_given() -> None:
    activity = fold(
        [
            visit("/c/phones", NOW - timedelta(days=14)),
            visit("/p/phn-x", NOW, "PHN-X"),
            visit("/p/mug", NOW, "MUG"),
            visit("/c/coffee", NOW),
        ]
    )

    plain = interests(activity, NOW).categories
    mapped = interests(activity, NOW, category_of={"PHN-X": "Phones"}).categories

    assert [(c.key, c.weight) for c in plain] == [("coffee", 1.0), ("phones", 0.5)]
    assert [(c.key, c.weight, c.views) for c in mapped] == [("phones", 1.5, 2), ("coffee", 1.0, 1)]


def test_at_most_five_interests_each() -> None:
    activity = fold(visit(f"/p/{i}", NOW - timedelta(days=i), f"S{i}") for i in range(8))

    assert [i.key for i in interests(activity, NOW).products] == ["S0", "S1", "S2", "S3", "S4"]


@given(st.lists(st.integers(0, 60 * 24), min_size=1, max_size=12), st.randoms())
def test_the_weight_does_not_depend_on_the_order_views_arrive_in(
    hours_ago: Sequence[int], random: Random
) -> None:
    views = [visit("/p/a", NOW - timedelta(hours=h), "A") for h in hours_ago]
    shuffled = list(views)
    random.shuffle(shuffled)

    (first,) = interests(fold(views), NOW).products
    (second,) = interests(fold(shuffled), NOW).products

    expected = sum(0.5 ** (h / (14 * 24)) for h in hours_ago)
    assert first.weight == pytest.approx(expected, abs=1e-4)
    assert second.weight == pytest.approx(expected, abs=1e-4)
    assert first.views == second.views == len(hours_ago)
    assert first.last_viewed_at == NOW - timedelta(hours=min(hours_ago))
