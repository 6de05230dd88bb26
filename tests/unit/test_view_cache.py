"""The projector's in-memory cache of folded views: bounded, least recently used out."""

from __future__ import annotations

from services.projector import Folded, ViewCache


def entry(version: int) -> Folded:
    return Folded(version, version * 10, f"state {version}")


def test_the_cache_keeps_at_most_its_size_dropping_the_least_recently_used() -> None:
    cache = ViewCache(2)
    cache.update({"A": entry(1), "B": entry(1)})
    assert cache.get("A") == entry(1)  # A is now more recent than B

    cache.update({"C": entry(1)})

    assert "A" in cache and "C" in cache
    assert "B" not in cache
    assert cache.get("B") is None


def test_an_update_replaces_the_entry_and_makes_it_the_most_recent() -> None:
    cache = ViewCache(2)
    cache.update({"A": entry(1), "B": entry(1)})

    cache.update({"A": entry(2)})
    cache.update({"C": entry(1)})

    assert cache.get("A") == entry(2)
    assert "B" not in cache


def test_a_cache_of_size_zero_keeps_nothing() -> None:
    cache = ViewCache(0)
    cache.update({"A": entry(1)})

    assert "A" not in cache
