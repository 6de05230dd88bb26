"""PAIRS_SQL picks, next to the co-purchase tables, the rows `goes_well_with` chooses from: over
random catalogs and baskets, `goes_well_with` on those rows (as the 360's offers read them) gives
the same suggestions as on every count, worked out here from the baskets. Real PostgreSQL."""

from __future__ import annotations

import random
from collections import Counter
from itertools import permutations

import psycopg
import pytest

from projections.offer_view import (
    COPURCHASE_ITEMS,
    ITEMS_TABLE,
    ORDERS_TABLE,
    PAIRS_SQL,
    PAIRS_TABLE,
    co_purchases,
    pairs_params,
)
from projections.offers import TOP, CoPurchases, Suggestion, goes_well_with

pytestmark = pytest.mark.integration

# code-point order and a locale's order differ on case and punctuation
SKUS = [f"{prefix}{i}" for i, prefix in enumerate(["a-", "B_", "b.", "A", "c-", "C_"] * 5)]


ANCHOR, FAMILY = SKUS[-8], SKUS[-7:]
"""Bought only together, each of the family as often with the anchor: ties at every rank."""


def baskets(rng: random.Random) -> list[frozenset[str]]:
    catalog = SKUS[:-8]
    popular = rng.sample(catalog, 6)
    bundles = [frozenset(rng.sample(catalog, 3)) for _ in range(4)]
    times = rng.randrange(3, 6)
    orders = [frozenset({ANCHOR, sku}) for sku in FAMILY for _ in range(times)]
    for _ in range(rng.randrange(50, 400)):
        kind = rng.random()
        if kind < 0.3:
            orders.append(rng.choice(bundles))
        else:
            pool = popular if kind < 0.6 else catalog
            orders.append(frozenset(rng.sample(pool, rng.choice((1, 2, 2, 3)))))
    return orders


def counted(orders: list[frozenset[str]]) -> CoPurchases:
    """N, n(A) and n(A,B) of the orders, counted here."""
    products = Counter(sku for order in orders for sku in order)
    pairs = Counter(pair for order in orders for pair in permutations(order, 2))
    counts = CoPurchases(orders=len(orders), products=dict(products))
    for (a, b), together in pairs.items():
        counts.pairs.setdefault(a, {})[b] = together
    return counts


def store(conn: psycopg.Connection, counts: CoPurchases) -> None:
    conn.execute(f"TRUNCATE {ITEMS_TABLE}, {PAIRS_TABLE}, {ORDERS_TABLE}")
    conn.execute(f"INSERT INTO {ORDERS_TABLE} VALUES (1, %s)", (counts.orders,))
    items = [(sku, n, f"Product {sku}") for sku, n in counts.products.items()]
    pairs = [(a, b, n) for a, partners in counts.pairs.items() for b, n in partners.items()]
    with conn.cursor() as cursor:
        cursor.executemany(f"INSERT INTO {ITEMS_TABLE} VALUES (%s, %s, %s)", items)
        cursor.executemany(f"INSERT INTO {PAIRS_TABLE} VALUES (%s, %s, %s)", pairs)


def picked(conn: psycopg.Connection, have: set[str]) -> tuple[list[Suggestion], dict[str, str]]:
    rows = conn.execute(PAIRS_SQL, pairs_params(sorted(have))).fetchall()
    counts, names = co_purchases(rows)
    return goes_well_with(have, counts), names


def test_goes_well_with_on_the_picked_rows_equals_it_on_every_count(fresh_database: str) -> None:
    rng = random.Random(7)
    full, boundary_ties = 0, 0
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(COPURCHASE_ITEMS.create_sql)
        for _ in range(30):
            counts = counted(baskets(rng))
            store(conn, counts)
            for _ in range(20):
                have = set(rng.sample(SKUS, rng.randrange(1, 6))) | (
                    {ANCHOR} if rng.random() < 0.3 else set()
                )
                expected = goes_well_with(have, counts)
                suggestions, names = picked(conn, have)
                assert suggestions == expected, sorted(have)
                assert {names[s.sku] for s in suggestions} == {f"Product {s.sku}" for s in expected}
                ranked = goes_well_with(have, counts, limit=len(SKUS))
                full += len(ranked) > TOP
                boundary_ties += len(ranked) > TOP and (
                    (ranked[TOP - 1].lift, ranked[TOP - 1].together)
                    == (ranked[TOP].lift, ranked[TOP].together)
                )  # which of the two makes the cut is the SKU's order
    assert full > 50 and boundary_ties > 10, "the limit and the tie-breaks were put to the test"


def test_nothing_is_picked_without_counted_orders(fresh_database: str) -> None:
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(COPURCHASE_ITEMS.create_sql)
        assert picked(conn, {SKUS[0]}) == ([], {})
