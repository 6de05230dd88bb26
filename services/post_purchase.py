"""Post-purchase follow-ups: a purchase whose total is above its currency's threshold schedules a
follow-up call some days later, as a `followup.scheduled` emitted through the normal intake.

The projector asks `PostPurchaseFollowups` which touchpoints a batch calls for and enqueues them
in the intake outbox (services/intake_outbox.py) in the batch's transaction; the relay publishes
them to crm.touchpoints and the recorder records them like any other touchpoint. Exactly once:
the event id is a UUID 5 of the purchase's, so a redelivered purchase enqueues nothing new and a
republished follow-up is dropped by the recorder. A purchase whose follow-up would already be due
(history being loaded) schedules none (projections/followups.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from events.envelope import Envelope, validate_envelope
from infra.settings import Settings
from projections.followups import PostPurchasePolicy, post_purchase_envelope
from projections.recorded import RecordedEvent


class PostPurchaseFollowups:
    """The `followup.scheduled` touchpoints a batch of recorded events calls for."""

    def __init__(self, policy: PostPurchasePolicy) -> None:
        self.policy = policy

    @classmethod
    def from_settings(cls, settings: Settings) -> PostPurchaseFollowups:
        return cls(
            PostPurchasePolicy(
                thresholds=dict(settings.followup_purchase_thresholds),
                delay=timedelta(days=settings.followup_purchase_delay_days),
                assignee=settings.followup_purchase_assignee,
            )
        )

    def __call__(self, events: Sequence[RecordedEvent], now: datetime) -> list[Envelope]:
        wires = (
            post_purchase_envelope(e.envelope, self.policy, now)
            for e in events
            if e.envelope.type == "purchase.made"
        )
        return [validate_envelope(wire) for wire in wires if wire is not None]
