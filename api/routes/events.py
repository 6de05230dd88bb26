"""POST /events: HTTP ingest into crm.touchpoints, with the SDK's validation."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from api.deps import AppSettings, Producer
from api.ingest import RejectedBatch, parse_batch
from api.openapi import INGEST_BODY
from api.producer import BrokerUnavailable

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
        422: {"model": Rejected, "description": "Invalid body or events; nothing accepted"},
        503: {"model": NotAccepted, "description": "Broker unavailable; retry safely"},
    },
    openapi_extra=INGEST_BODY,
)
async def post_events(
    request: Request, settings: AppSettings, producer: Producer
) -> Accepted | JSONResponse:
    """Validate every event, then write all of them to crm.touchpoints, or none."""
    try:
        records = parse_batch(await request.body(), settings.max_event_bytes)
    except RejectedBatch as rejected:
        body = Rejected(detail=rejected.detail, errors=rejected.errors)
        return JSONResponse(body.model_dump(exclude_none=True), status_code=422)
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
