"""POST /events: HTTP ingest into crm.touchpoints, with the SDK's validation."""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api.deps import AppSettings, Producer, Store
from api.ingest import (
    ImpossibleMerges,
    ImpossibleTransitions,
    Record,
    RejectedBatch,
    has_complaints,
    has_merges,
    merge_customers,
    parse_batch,
    refuse_impossible_merges,
    refuse_impossible_transitions,
)
from api.openapi import INGEST_BODY
from api.producer import BrokerUnavailable
from infra.eventstore import EventStore
from projections.complaints import COMPLAINT_TYPES, case_key
from projections.merges import CUSTOMER_MERGED

log = logging.getLogger(__name__)

router = APIRouter(tags=["events"])


class Accepted(BaseModel):
    """Every event was acknowledged by the broker; ids in request order."""

    accepted: int
    event_ids: list[str]


class EventError(BaseModel):
    """Why one event (at `index` in the request) or the whole body (no `index`) was refused."""

    index: int | None = None
    code: str
    field: str
    message: str


class Rejected(BaseModel):
    """Nothing was accepted; every invalid event is listed."""

    detail: str
    errors: list[EventError]


class TransitionError(BaseModel):
    """Why the complaint event at `index` in the request cannot be taken by its case: `status`
    is the case's before it (`unknown`, `open` or `resolved`), `message` what the event needed."""

    index: int
    code: str
    field: str
    message: str
    complaint_id: str
    status: Literal["unknown", "open", "resolved"]


class RefusedTransitions(BaseModel):
    """Nothing was accepted; every impossible complaint transition is listed."""

    detail: str
    errors: list[TransitionError]


class MergeError(BaseModel):
    """Why the merge event at `index` in the request is refused: `code` names the rule
    (`merge_into_self`, `already_merged`, `merge_into_merged`, `unknown_customer`), `message`
    says what it needed."""

    index: int
    code: str
    field: str
    message: str
    customer_id: str
    into_customer_id: str | None


class RefusedMerges(BaseModel):
    """Nothing was accepted; every merge the rules refuse is listed."""

    detail: str
    errors: list[MergeError]


class NotAccepted(BaseModel):
    """The broker did not acknowledge; resend the same events with these ids."""

    detail: str
    event_ids: list[str]


@router.post(
    "/events",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    summary="Submit touchpoints",
    responses={
        409: {
            "model": RefusedTransitions | RefusedMerges,
            "description": (
                "A complaint event is a transition its case cannot take (resolving an unknown or "
                "resolved complaint, assigning a resolved one, reopening an open one, filing an "
                "existing id), or a customer.merged event a merge the rules refuse (into itself, "
                "of a customer already merged, into one merged away or unknown), given what is "
                "recorded so far and the request's events before it; nothing accepted"
            ),
        },
        422: {"model": Rejected, "description": "Invalid body or events; nothing accepted"},
        503: {"model": NotAccepted, "description": "Broker unavailable; retry safely"},
    },
    openapi_extra=INGEST_BODY,
)
async def post_events(
    request: Request, settings: AppSettings, producer: Producer, store: Store
) -> Accepted | JSONResponse:
    """Validate every event, check complaint transitions against the recorded cases and merges
    against the recorded merges, then write all of them to crm.touchpoints, or none."""
    try:
        records = parse_batch(await request.body(), settings.max_event_bytes)
    except RejectedBatch as rejected:
        body = Rejected(detail=rejected.detail, errors=rejected.errors)
        return JSONResponse(body.model_dump(exclude_none=True), status_code=422)
    if has_complaints(records):  # no query for a request without complaint events
        try:
            await run_in_threadpool(_check_transitions, store, records)
        except ImpossibleTransitions as conflict:
            log.info("ingest refused impossible transitions events=%d", len(conflict.errors))
            body = RefusedTransitions(detail=conflict.detail, errors=conflict.errors)
            return JSONResponse(body.model_dump(), status_code=409)
    if has_merges(records):  # no query for a request without merge events
        try:
            await run_in_threadpool(_check_merges, store, records)
        except ImpossibleMerges as conflict:
            log.info("ingest refused impossible merges events=%d", len(conflict.errors))
            merges = RefusedMerges(detail=conflict.detail, errors=conflict.errors)
            return JSONResponse(merges.model_dump(), status_code=409)
    event_ids = [r.event_id for r in records]
    try:
        await run_in_threadpool(producer.produce, records)
    except BrokerUnavailable as error:
        log.warning("ingest not accepted events=%d error=%r", len(records), str(error))
        detail = (
            f"the broker did not acknowledge ({error}); the events were not accepted and can "
            "be retried safely with the same event_ids"
        )
        body = NotAccepted(detail=detail, event_ids=event_ids)
        return JSONResponse(body.model_dump(), status_code=503)
    return Accepted(accepted=len(records), event_ids=event_ids)


def _check_transitions(store: EventStore, records: list[Record]) -> None:
    """ImpossibleTransitions unless the request's complaint events fit the recorded cases (the
    recorder checks them again: events in flight are not recorded yet)."""
    complaints = [r.envelope for r in records if r.envelope.type in COMPLAINT_TYPES]
    keys = {case_key(e) for e in complaints}
    state = store.complaint_state([e.event_id for e in complaints], keys)
    refuse_impossible_transitions(records, state)


def _check_merges(store: EventStore, records: list[Record]) -> None:
    """ImpossibleMerges unless the request's merge events pass the rules against the recorded
    merges (the recorder checks them again: events in flight are not recorded yet)."""
    merges = [r for r in records if r.envelope.type == CUSTOMER_MERGED]
    state = store.merge_state([r.event_id for r in merges], merge_customers(merges))
    refuse_impossible_merges(records, state)
