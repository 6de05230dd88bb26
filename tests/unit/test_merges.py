"""Merge rules: what a customer.merged event may ask for, and how an id leads to its survivor."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projections.merges import (
    Merge,
    MergeCycle,
    MergeError,
    MergeRejected,
    check_merge,
    merge_of,
    merged_away,
    survivor,
    with_merge,
)

# --- the payload ---------------------------------------------------------------------------


def test_a_payload_names_the_survivor() -> None:
    assert merge_of("C-7", {"into_customer_id": "C-2"}) == Merge("C-7", "C-2")


@pytest.mark.parametrize(
    "payload",
    [{}, {"into_customer_id": None}, {"into_customer_id": ""}, {"into_customer_id": 7},
     {"into_customer_id": "C 2"}, {"into_customer_id": "C-" + "9" * 63}],
)  # fmt: skip
def test_a_payload_without_a_valid_customer_id_is_rejected(payload: dict[str, Any]) -> None:
    with pytest.raises(MergeRejected) as caught:
        merge_of("C-7", payload)

    assert caught.value.code == "invalid_payload"
    assert "into_customer_id" in caught.value.message


def test_a_payload_with_other_fields_is_rejected() -> None:
    with pytest.raises(MergeRejected, match="unknown field 'reason'"):
        merge_of("C-7", {"into_customer_id": "C-2", "reason": "duplicate"})


# --- the rules -----------------------------------------------------------------------------


def test_a_merge_of_two_distinct_customers_is_accepted() -> None:
    assert with_merge({}, Merge("C-7", "C-2")) == {"C-7": "C-2"}


def test_a_merge_into_itself_is_rejected() -> None:
    with pytest.raises(MergeRejected) as caught:
        check_merge(Merge("C-7", "C-7"), {})

    error = caught.value
    assert (error.code, error.customer_id, error.into_customer_id) == (
        "merge_into_self",
        "C-7",
        "C-7",
    )
    assert error.message == "customer C-7 cannot be merged into itself"


def test_a_merge_into_a_customer_merged_away_is_rejected_and_names_its_survivor() -> None:
    merged = {"C-2": "C-3", "C-3": "C-4"}

    with pytest.raises(MergeRejected) as caught:
        check_merge(Merge("C-7", "C-2"), merged)

    assert caught.value.code == "merge_into_merged"
    assert caught.value.message == (
        "customer C-2 was itself merged away; merge C-7 into C-4 instead"
    )


def test_a_customer_merged_away_cannot_be_merged_again() -> None:
    with pytest.raises(MergeRejected) as caught:
        check_merge(Merge("C-7", "C-5"), {"C-7": "C-2"})

    assert caught.value.code == "already_merged"
    assert "already merged into C-2" in caught.value.message


def test_a_merge_into_an_unknown_customer_is_rejected_when_the_known_ones_are_given() -> None:
    check_merge(Merge("C-7", "C-2"), {}, known={"C-7", "C-2"})

    with pytest.raises(MergeRejected) as caught:
        check_merge(Merge("C-7", "C-9"), {}, known={"C-7", "C-2"})

    assert caught.value.code == "unknown_customer"


def test_a_rejected_merge_leaves_the_mapping_as_it_was() -> None:
    merged = {"C-7": "C-2"}

    with pytest.raises(MergeRejected):
        with_merge(merged, Merge("C-2", "C-7"))

    assert merged == {"C-7": "C-2"}


def test_merge_errors_carry_code_and_message_in_their_text() -> None:
    error = MergeRejected("merge_into_self", "C-1", "C-1", "customer C-1 cannot be merged")

    assert isinstance(error, MergeError)
    assert str(error) == "merge_into_self: customer C-1 cannot be merged"


# --- survivors -----------------------------------------------------------------------------


def test_a_customer_never_merged_is_its_own_survivor() -> None:
    assert survivor("C-1", {"C-7": "C-2"}) == "C-1"


def test_chains_of_merges_are_followed_to_the_end() -> None:
    merged: dict[str, str] = {}
    for merge in (Merge("C-1", "C-2"), Merge("C-2", "C-3"), Merge("C-4", "C-3")):
        merged = with_merge(merged, merge)

    assert [survivor(c, merged) for c in ("C-1", "C-2", "C-3", "C-4")] == ["C-3"] * 4
    assert merged_away("C-3", merged) == {"C-1", "C-2", "C-4"}
    assert merged_away("C-1", merged) == frozenset()


def test_a_cycle_is_detected_and_named() -> None:
    merged = {"C-0": "C-1", "C-1": "C-2", "C-2": "C-3", "C-3": "C-1"}

    with pytest.raises(MergeCycle) as caught:
        survivor("C-0", merged)

    assert caught.value.code == "merge_cycle"
    assert caught.value.cycle == ("C-1", "C-2", "C-3")
    assert "C-1 -> C-2 -> C-3 -> C-1" in caught.value.message


def test_a_customer_merged_into_itself_in_a_corrupt_mapping_is_a_cycle() -> None:
    with pytest.raises(MergeCycle):
        survivor("C-1", {"C-1": "C-1"})


@given(
    st.lists(
        st.tuples(st.integers(0, 9), st.integers(0, 9)).map(
            lambda pair: Merge(f"C-{pair[0]}", f"C-{pair[1]}")
        ),
        max_size=30,
    )
)
def test_merges_that_pass_the_rules_never_form_a_cycle(merges: list[Merge]) -> None:
    merged: dict[str, str] = {}
    for merge in merges:
        try:
            merged = with_merge(merged, merge)
        except MergeRejected:
            continue
        # the survivor of both ends of an accepted merge is one customer, never merged away
        end = survivor(merge.customer_id, merged)
        assert end == survivor(merge.into_customer_id, merged)
        assert end not in merged
    for customer in (f"C-{i}" for i in range(10)):
        assert survivor(customer, merged) not in merged
