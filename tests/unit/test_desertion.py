"""The desertion judgement and its episodes: pure functions, no I/O."""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from projections.alerts import CUSTOMER_DESERTING, CUSTOMER_DESERTING_RESOLVED, alert_id
from projections.desertion import (
    DesertionRule,
    Episodes,
    judge,
    month_of,
    transition,
)
from projections.recorded import RecordedEvent
from services.desertion import DesertionDetector
from tests.unit.test_customer_360 import recorded

RULE = DesertionRule()
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
# The 10 complete months before November 2026: baseline Jan-Jun, recent Jul-Oct.
BASELINE = [f"2026-{m:02d}" for m in range(1, 7)]
RECENT = [f"2026-{m:02d}" for m in range(7, 11)]
LONG_AGO = datetime(2025, 6, 1, tzinfo=UTC)


def series(baseline: str, recent: str, currency: str = "EUR") -> dict[str, dict[str, Decimal]]:
    months = {m: Decimal(baseline) for m in BASELINE} | {m: Decimal(recent) for m in RECENT}
    return {currency: months}


def test_a_customer_who_spent_1000_a_month_and_500_lately_is_deserting() -> None:
    verdict = judge(series("1000", "500"), LONG_AGO, NOW, RULE)

    assert verdict.state == "deserting"
    assert (verdict.baseline_monthly, verdict.recent_monthly) == (Decimal(1000), Decimal(500))
    assert verdict.drop_ratio == Decimal("0.5")
    assert verdict.currency == "EUR"
    assert list(verdict.months) == BASELINE + RECENT


def test_a_customer_who_stopped_buying_is_deserting_months_without_purchases_count_as_zero() -> (
    None
):
    spend = {"EUR": {m: Decimal(300) for m in BASELINE}}

    verdict = judge(spend, LONG_AGO, NOW, RULE)

    assert verdict.state == "deserting"
    assert verdict.recent_monthly == 0
    assert verdict.drop_ratio == 0
    assert all(verdict.months[m] == 0 for m in RECENT)


def test_a_steady_customer_is_not_deserting() -> None:
    assert judge(series("1000", "1000"), LONG_AGO, NOW, RULE).state == "steady"


def test_a_customer_too_new_for_a_baseline_is_not_judged_deserting() -> None:
    joined_in_march = datetime(2026, 3, 2, tzinfo=UTC)
    spend = {"EUR": {"2026-03": Decimal(5000), "2026-04": Decimal(5000)}}

    assert judge(spend, joined_in_march, NOW, RULE).state == "too_new"


def test_a_customer_seen_in_the_first_baseline_month_has_a_baseline() -> None:
    assert judge(series("1000", "0"), datetime(2026, 1, 31, tzinfo=UTC), NOW, RULE).state == (
        "deserting"
    )


def test_exactly_the_ratio_is_deserting_and_just_above_is_not() -> None:
    assert judge(series("1000", "600"), LONG_AGO, NOW, RULE).state == "deserting"
    assert judge(series("1000", "600.01"), LONG_AGO, NOW, RULE).state == "steady"


def test_a_baseline_below_the_minimum_is_low_spend_not_deserting() -> None:
    assert judge(series("99.99", "0"), LONG_AGO, NOW, RULE).state == "low_spend"
    assert judge(series("100", "0"), LONG_AGO, NOW, RULE).state == "deserting"


def test_the_current_incomplete_month_and_months_before_the_baseline_are_not_judged() -> None:
    spend = series("1000", "1000")
    spend["EUR"] |= {"2026-11": Decimal(-99999), "2025-12": Decimal(-99999)}

    assert judge(spend, LONG_AGO, NOW, RULE).state == "steady"


def test_the_main_currency_is_the_one_spent_most_in_the_window() -> None:
    spend = series("1000", "1000", "EUR") | series("2000", "100", "USD")
    spend["GBP"] = {"2020-01": Decimal(1_000_000)}

    verdict = judge(spend, LONG_AGO, NOW, RULE)

    assert (verdict.currency, verdict.state) == ("USD", "deserting")


def test_windows_and_ratio_are_settings() -> None:
    rule = DesertionRule(
        recent_months=2, baseline_months=3, ratio=Decimal("0.9"), minimum=Decimal(0)
    )
    spend = {"EUR": {"2026-06": Decimal(10), "2026-07": Decimal(10), "2026-08": Decimal(10),
                     "2026-09": Decimal(9), "2026-10": Decimal(9)}}  # fmt: skip

    verdict = judge(spend, LONG_AGO, NOW, rule)

    assert list(verdict.months) == ["2026-06", "2026-07", "2026-08", "2026-09", "2026-10"]
    assert (verdict.state, verdict.drop_ratio) == ("deserting", Decimal("0.9"))


def test_months_are_utc_calendar_months() -> None:
    assert month_of(datetime.fromisoformat("2026-01-31T23:30:00-02:00")) == "2026-02"


# --- episodes -------------------------------------------------------------------------------


def test_the_first_deserting_verdict_opens_an_episode_with_one_alert() -> None:
    verdict = judge(series("1000", "500"), LONG_AGO, NOW, RULE)

    step = transition("C-1", Episodes(), verdict, NOW, RULE)

    assert step.episodes == Episodes(1, True, NOW, Decimal(1000))
    [alert] = step.alerts
    assert alert.kind == CUSTOMER_DESERTING
    assert alert.alert_id == alert_id(CUSTOMER_DESERTING, "C-1", "1")
    assert alert.details["baseline_monthly"] == "1000.00"
    assert alert.details["recent_monthly"] == "500.00"
    assert alert.details["drop_ratio"] == "0.5000"
    assert alert.details["months"]["2026-07"] == "500"
    assert "coupon" in alert.suggested_action
    assert step.resolved == []


def test_an_open_episode_raises_nothing_more_while_the_customer_stays_deserting() -> None:
    verdict = judge(series("1000", "500"), LONG_AGO, NOW, RULE)
    opened = transition("C-1", Episodes(), verdict, NOW, RULE).episodes

    step = transition("C-1", opened, verdict, NOW, RULE)

    assert (step.episodes, step.alerts, step.resolved) == (opened, [], [])


def test_recovery_ends_the_episode_and_a_later_drop_is_a_new_episode() -> None:
    dropping = judge(series("1000", "500"), LONG_AGO, NOW, RULE)
    steady = judge(series("1000", "900"), LONG_AGO, NOW, RULE)
    opened = transition("C-1", Episodes(), dropping, NOW, RULE).episodes

    ended = transition("C-1", opened, steady, NOW, RULE)
    again = transition("C-1", ended.episodes, dropping, NOW, RULE)

    [resolution] = ended.alerts
    assert resolution.kind == CUSTOMER_DESERTING_RESOLVED
    assert resolution.details["episode"] == 1
    assert ended.resolved == [alert_id(CUSTOMER_DESERTING, "C-1", "1"), resolution.alert_id]
    assert ended.episodes.open is False
    [second] = again.alerts
    assert second.alert_id == alert_id(CUSTOMER_DESERTING, "C-1", "2")
    assert second.alert_id != alert_id(CUSTOMER_DESERTING, "C-1", "1")


def test_a_returning_customer_recovers_against_the_baseline_their_episode_began_with() -> None:
    opened = Episodes(1, True, NOW, Decimal(1000))
    # The good months have left the baseline window: the judged baseline is under the minimum.
    back = judge({"EUR": {m: Decimal(700) for m in RECENT}}, LONG_AGO, NOW, RULE)
    still_low = judge({"EUR": {m: Decimal(500) for m in RECENT}}, LONG_AGO, NOW, RULE)

    assert back.state == "low_spend"
    assert transition("C-1", opened, back, NOW, RULE).episodes.open is False
    assert transition("C-1", opened, still_low, NOW, RULE).episodes.open is True


@given(
    st.lists(st.decimals(min_value=-500, max_value=5000, places=2), min_size=10, max_size=10),
)
def test_the_verdict_follows_the_rule_for_any_series(amounts: list[Decimal]) -> None:
    spend = {"EUR": dict(zip(BASELINE + RECENT, amounts, strict=True))}
    baseline, recent = sum(amounts[:6]) / 6, sum(amounts[6:]) / 4
    expected = (
        "low_spend"
        if baseline < 100
        else "deserting"
        if recent <= Decimal("0.6") * baseline
        else "steady"
    )

    assert judge(spend, LONG_AGO, NOW, RULE).state == expected


# --- when the detector judges: live, or once a catch-up has settled ---------------------------


class Ticks:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def purchases(count: int, at: datetime, prefix: str = "C-") -> list[RecordedEvent]:
    return [recorded(1, "purchase.made", at=at, customer_id=f"{prefix}{n}") for n in range(count)]


EARLY = datetime(2026, 11, 1, 0, 30, tzinfo=UTC)
"""The detector's clock in these tests: half an hour into a month."""
LATELY = EARLY - timedelta(minutes=45)  # within the hour, but in the previous month
LONG_AGO_EVENT = EARLY - timedelta(days=200)


def detector(ticks: Ticks) -> DesertionDetector:
    pool: Any = None  # note() and settled() never touch the database
    return DesertionDetector(
        pool, RULE, lambda: EARLY, timedelta(hours=1), settle_s=5.0, catch_up_events=100,
        hold_s=0.5, monotonic=ticks,
    )  # fmt: skip


def test_start_up_counts_as_a_catch_up_until_it_has_settled() -> None:
    ticks = Ticks()
    judge_later = detector(ticks)

    judge_later.note(purchases(1, LATELY))
    assert (judge_later.due, judge_later.pending) == (set(), {"C-0"})
    ticks.now += 5
    assert judge_later.settled()


def test_spend_in_the_current_month_is_not_judged_it_changes_no_verdict() -> None:
    ticks = Ticks()
    watcher = detector(ticks)
    ticks.now += 5

    watcher.note(purchases(3, EARLY))

    assert (watcher.due, watcher.pending, watcher.held) == (set(), set(), deque())


def test_a_few_late_purchases_are_judged_at_once_a_burst_of_history_once_it_stopped() -> None:
    ticks = Ticks()
    watcher = detector(ticks)
    ticks.now += 5

    watcher.note(purchases(3, LONG_AGO_EVENT, "late-"))
    watcher.note(purchases(1, LATELY, "late-"))  # a live one of a held customer waits with it
    assert (watcher.due, watcher.pending) == (set(), set()), "held: a catch-up may be starting"
    ticks.now += 0.5
    watcher._release_held()
    assert watcher.due == {"late-0", "late-1", "late-2"}
    watcher.due.clear()  # judged

    watcher.note(purchases(2, LONG_AGO_EVENT, "held-"))

    watcher.note(purchases(60, LONG_AGO_EVENT, "bulk-"))
    ticks.now += 1
    watcher.note(purchases(40, LONG_AGO_EVENT, "bulk-"))  # 103 historic events within 5 s
    assert not watcher.settled()
    # held when the catch-up began, the first ones wait for it too
    assert watcher.pending == {f"bulk-{n}" for n in range(60)} | {"held-0", "held-1"}
    assert (watcher.due, watcher.held) == (set(), deque())

    ticks.now += 1
    watcher.note(purchases(1, LATELY, "bulk-"))  # live, but bulk-0 waits for its whole history
    watcher.note(purchases(1, LATELY, "live-"))
    assert "bulk-0" not in watcher.due
    assert "live-0" in watcher.pending, "nobody is judged while a catch-up goes on"
    ticks.now += 4.9
    assert not watcher.settled()
    ticks.now += 0.2
    assert watcher.settled()


def test_a_busy_live_stream_is_no_catch_up() -> None:
    ticks = Ticks()
    watcher = detector(ticks)
    ticks.now += 5

    watcher.note(purchases(1000, LATELY))

    assert watcher.settled()
    assert len(watcher.due) == 1000
