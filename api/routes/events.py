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
    ImpossibleTransitions,
    Record,
    RejectedBatch,
    has_complaints,
    parse_batch,
    refuse_impossible_transitions,
)
from api.openapi import INGEST_BODY
from api.producer import BrokerUnavailable
from infra.eventstore import EventStore
from projections.complaints import COMPLAINT_TYPES, case_key

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
            "model": RefusedTransitions,
            "description": (
                "A complaint event is a transition its case cannot take (resolving an unknown or "
                "resolved complaint, assigning a resolved one, reopening an open one, filing an "
                "existing id), given the cases recorded so far and the request's events before "
                "it; nothing accepted"
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
    """Validate every event and check complaint transitions against the recorded cases, then
    write all of them to crm.touchpoints, or none."""
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
