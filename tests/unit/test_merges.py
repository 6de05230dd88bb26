"""Merge rules: what a customer.merged event may ask for, and how an id leads to its survivor;
and, without I/O, how intake applies them: the recorder's guard of a batch and its backfill, and
the HTTP 409 rule."""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kafka.consumer.fetcher import ConsumerRecord

from api.ingest import ImpossibleMerges, Record, refuse_impossible_merges
from events.codec import encode
from events.envelope import Envelope, validate_envelope
from infra.merge_ledger import MergeRow, MergeState
from projections.merges import (
    Merge,
    MergeCycle,
    MergeError,
    MergeRejected,
    check_merge,
    merge_customers,
    merge_of,
    merged_away,
    survivor,
    with_merge,
)
from services.intake_guards import MergeGuard, backfill_merges, guard_merges
from services.recorder import deadletter_headers
from tests.unit.examples import envelope

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


# --- intake: the recorder's guard, its backfill, the HTTP 409 rule -------------------------


def merged_event(customer: str, into: str | None = "C-2", **extra: Any) -> Envelope:
    payload = {} if into is None else {"into_customer_id": into}
    wire = envelope("customer.merged", {**payload, **extra}, event_id=str(uuid.uuid4()),
                    customer_id=customer)  # fmt: skip
    if into is None or extra:  # the wire contract refuses these; built as the guard may see one
        valid = validate_envelope(envelope("customer.merged"))
        return replace(valid, event_id=wire["event_id"], customer_id=customer,
                       payload=wire["payload"])  # fmt: skip
    return validate_envelope(wire)


def other_event(customer: str) -> Envelope:
    wire = envelope("call.logged", {"direction": "inbound", "duration_seconds": 5},
                    event_id=str(uuid.uuid4()), customer_id=customer)  # fmt: skip
    return validate_envelope(wire)


def source(e: Envelope, offset: int) -> ConsumerRecord:
    return ConsumerRecord("crm.touchpoints", 1, None, offset, 0, 0, e.customer_id.encode(),
                          encode(e), [], None, 0, 0, 0)  # fmt: skip


def guard(events: list[Envelope], state: MergeState) -> MergeGuard:
    return guard_merges(events, [source(e, i) for i, e in enumerate(events)], state)


def codes(checked: MergeGuard) -> list[tuple[int, str]]:
    return [(r.record.offset, r.error.code) for r in checked.refused]


KNOWN = MergeState(set(), {}, {"C-1", "C-2", "C-3", "C-4"})


def test_the_guard_accepts_a_merge_into_a_known_customer_and_writes_its_row() -> None:
    merge = merged_event("C-1", "C-2")

    checked = guard([merge], KNOWN)

    assert checked.refused == [] and checked.refused_ids == frozenset()
    assert checked.merges.type == "customer.merged"
    assert list(checked.merges.rows) == [MergeRow("C-1", "C-2", merge.event_id)]
    assert checked.merges.unmerged == {"C-1", "C-2"}


@pytest.mark.parametrize(
    ("customer", "into", "merged_into", "code", "field", "message"),
    [
        ("C-1", "C-1", {}, "merge_into_self", "payload.into_customer_id",
         "customer C-1 cannot be merged into itself"),
        ("C-1", "C-3", {"C-1": "C-2"}, "already_merged", "customer_id",
         "customer C-1 was already merged into C-2"),
        ("C-4", "C-1", {"C-1": "C-2", "C-2": "C-3"}, "merge_into_merged",
         "payload.into_customer_id", "customer C-1 was itself merged away; merge C-4 into C-3 "
         "instead"),
        ("C-1", "C-9", {}, "unknown_customer", "payload.into_customer_id",
         "no customer C-9 to merge C-1 into"),
    ],
)  # fmt: skip
def test_the_guard_dead_letters_a_refused_merge_with_the_rules_code_and_reason(
    customer: str, into: str, merged_into: dict[str, str], code: str, field: str, message: str
) -> None:
    merge = merged_event(customer, into)
    state = MergeState(set(), merged_into, {"C-1", "C-2", "C-3", "C-4"})

    checked = guard([merge], state)

    [rejection] = checked.refused
    assert (rejection.error.code, rejection.error.field, rejection.error.message) == (
        code, field, message
    )  # fmt: skip
    assert checked.refused_ids == {merge.event_id} and list(checked.merges.rows) == []
    headers = dict(deadletter_headers(rejection))
    assert headers["crm.error.code"] == code.encode()
    assert headers["crm.error.message"] == f"{field}: {message}".encode()


def test_the_guard_names_an_invalid_payload_without_repeating_its_field() -> None:
    checked = guard([merged_event("C-1", None), merged_event("C-1", "C-2", note="x")], KNOWN)

    assert [r.error.code for r in checked.refused] == ["invalid_payload"] * 2
    assert [r.error.field for r in checked.refused] == ["", ""]
    assert checked.refused[0].error.message.startswith("payload.into_customer_id: expected")


def test_merges_within_a_batch_build_on_each_other_in_order() -> None:
    chain = [merged_event("C-1", "C-2"), merged_event("C-2", "C-3"), merged_event("C-4", "C-1"),
             merged_event("C-1", "C-3"), merged_event("C-3", "C-2")]  # fmt: skip

    checked = guard(chain, KNOWN)

    assert codes(checked) == [(2, "merge_into_merged"), (3, "already_merged"),
                              (4, "merge_into_merged")]  # fmt: skip
    assert "merge C-4 into C-3 instead" in checked.refused[0].error.message
    assert [(r.customer_id, r.into_customer_id) for r in checked.merges.rows] == [
        ("C-1", "C-2"), ("C-2", "C-3")
    ]  # fmt: skip
    assert checked.merges.unmerged == {"C-1", "C-2", "C-3"}


def test_two_merges_of_two_customers_into_each_other_cannot_both_pass() -> None:
    checked = guard([merged_event("C-1", "C-2"), merged_event("C-2", "C-1")], KNOWN)

    assert codes(checked) == [(1, "merge_into_merged")]


def test_a_customer_is_known_by_an_earlier_event_of_the_batch_that_is_recorded() -> None:
    state = MergeState(set(), {}, set())
    events = [merged_event("X-1", "X-1"), merged_event("C-2", "X-1"), merged_event("C-3", "N-1"),
              other_event("N-1"), merged_event("C-4", "N-1")]  # fmt: skip

    checked = guard(events, state)

    # X-1's only event is refused (not recorded): X-1 stays unknown; N-1 is known from its call
    assert codes(checked) == [(0, "merge_into_self"), (1, "unknown_customer"),
                              (2, "unknown_customer")]  # fmt: skip
    assert [r.customer_id for r in checked.merges.rows] == ["C-4"]


def test_without_the_merge_table_the_guard_does_not_ask_whether_customers_exist() -> None:
    checked = guard([merged_event("C-1", "C-9")], MergeState(set(), {}, None))

    assert checked.refused == [] and len(checked.merges.rows) == 1


def test_a_resent_merge_is_a_duplicate_not_a_second_merge() -> None:
    merge = merged_event("C-1", "C-2")
    recorded = MergeState({merge.event_id}, {"C-1": "C-2"}, {"C-1", "C-2"})

    assert guard([merge, merge], recorded) == guard([], recorded)
    again = guard([merge, merge], KNOWN)  # twice in one batch, not recorded yet
    assert again.refused == [] and [r.event_id for r in again.merges.rows] == [merge.event_id]


def test_a_refused_merge_resent_in_the_batch_is_dead_lettered_once() -> None:
    merge = merged_event("C-1", "C-1")

    checked = guard([merge, merge], KNOWN)

    assert codes(checked) == [(0, "merge_into_self")] and checked.refused_ids == {merge.event_id}


def test_the_customers_a_batch_asks_about_are_those_merged_away_and_into() -> None:
    events = [merged_event("C-1", "C-2"), other_event("C-7"), merged_event("C-3", None)]

    assert merge_customers(events) == {"C-1", "C-2", "C-3"}


def test_the_backfill_keeps_the_merges_the_rules_accept_in_position_order() -> None:
    stored = [merged_event("C-1", "C-2"), merged_event("C-2", "C-1"), merged_event("C-2", "C-3"),
              merged_event("C-1", "C-3"), merged_event("C-9", "C-9")]  # fmt: skip

    rows = list(backfill_merges(iter([(10 * (i + 1), e) for i, e in enumerate(stored)])))

    assert rows == [MergeRow("C-1", "C-2", stored[0].event_id, 10),
                    MergeRow("C-2", "C-3", stored[2].event_id, 30)]  # fmt: skip


def record_of(e: Envelope) -> Record:
    return Record(e.event_id, e.customer_id.encode(), encode(e), e)


def test_an_impossible_merge_in_a_request_is_refused_naming_index_code_and_reason() -> None:
    events = [other_event("C-1"), merged_event("C-1", "C-2"), merged_event("C-4", "C-1")]

    with pytest.raises(ImpossibleMerges) as caught:
        refuse_impossible_merges([record_of(e) for e in events], KNOWN)

    assert caught.value.detail == (
        "1 of 3 events are impossible merges; nothing was accepted (event 2: merge_into_merged: "
        "customer C-1 was itself merged away; merge C-4 into C-2 instead)"
    )
    assert caught.value.errors == [{
        "index": 2, "code": "merge_into_merged", "field": "payload.into_customer_id",
        "message": "customer C-1 was itself merged away; merge C-4 into C-2 instead",
        "customer_id": "C-4", "into_customer_id": "C-1",
    }]  # fmt: skip


def test_a_request_knows_customers_by_recorded_events_only_and_skips_resends() -> None:
    merge = merged_event("C-1", "C-2")
    recorded = MergeState({merge.event_id}, {"C-1": "C-2"}, {"C-1", "C-2", "C-3"})

    refuse_impossible_merges([record_of(merge), record_of(merged_event("C-3", "C-2"))], recorded)
    with pytest.raises(ImpossibleMerges) as caught:  # N-1's call may be recorded after the merge
        refuse_impossible_merges(
            [record_of(other_event("N-1")), record_of(merged_event("C-3", "N-1"))], recorded
        )
    assert [(e["index"], e["code"]) for e in caught.value.errors] == [(1, "unknown_customer")]
