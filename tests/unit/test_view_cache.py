"""The projector's in-memory cache of folded views: bounded, least recently used out."""

from __future__ import annotations

from services.view_folds import Folded, ViewCache


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


def test_a_staged_batch_is_seen_before_the_kept_views_whatever_the_size() -> None:
    cache = ViewCache(0)
    cache.stage({"A": entry(1)})
    cache.stage({"A": entry(2), "B": entry(1)})

    assert cache.get("A") == entry(2)  # the newest staged batch first
    assert "B" in cache
    assert "C" not in cache


def test_a_committed_batch_is_kept_and_the_next_staged_one_still_seen_first() -> None:
    cache = ViewCache(10)
    cache.update({"A": entry(1)})
    cache.stage({"A": entry(2)})
    cache.stage({"A": entry(3)})

    cache.commit()  # the oldest: A at 2

    assert cache.get("A") == entry(3)
    cache.commit()
    cache.discard()  # nothing is staged any more
    assert cache.get("A") == entry(3)


def test_a_discard_drops_every_staged_batch_and_keeps_what_was_committed() -> None:
    cache = ViewCache(10)
    cache.update({"A": entry(1)})
    cache.stage({"A": entry(2), "B": entry(1)})
    cache.stage({"A": entry(3)})

    cache.discard()

    assert cache.get("A") == entry(1)
    assert "B" not in cache
