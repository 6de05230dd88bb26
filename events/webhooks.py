"""Webhook signatures, for the platform that sends alerts and for the receivers that check them.

Every webhook request carries two headers:

    X-CRM-Timestamp: 1767261600
    X-CRM-Signature: sha256=<hex HMAC-SHA256 of b"1767261600." + raw body, keyed with the secret>

A receiver checks them against the raw bytes of the body, before parsing it:

    from events.webhooks import InvalidSignature, verify_request

    try:
        verify_request(secret, request.headers, raw_body)
    except InvalidSignature as error:
        return 401, str(error)

The timestamp is signed with the body, so a captured request cannot be replayed after
`tolerance_seconds` (5 minutes by default); receivers drop repeats within that window by the
`X-CRM-Delivery-Id` header (or the alert's `alert_id`).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable
from typing import Any, Protocol

TIMESTAMP_HEADER = "X-CRM-Timestamp"
SIGNATURE_HEADER = "X-CRM-Signature"
ALERT_ID_HEADER = "X-CRM-Alert-Id"
DELIVERY_ID_HEADER = "X-CRM-Delivery-Id"
SCHEME = "sha256="
DEFAULT_TOLERANCE_SECONDS = 300


class InvalidSignature(ValueError):
    """A webhook request whose signature or timestamp does not check out; the message says why."""


class Headers(Protocol):
    """Anything with `items()` of (name, value): a dict, `http.server`'s or Starlette's headers."""

    def items(self) -> Iterable[tuple[str, Any]]: ...


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """The `X-CRM-Signature` value of `body` sent at `timestamp` (Unix seconds)."""
    message = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return SCHEME + digest


def verify(
    secret: str,
    timestamp: str,
    signature: str,
    body: bytes,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Raise InvalidSignature unless `signature` is `sign(secret, timestamp, body)` and
    `timestamp` is within `tolerance_seconds` of `now` (default: the current time).

    The comparison takes the same time wherever the signatures differ."""
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise InvalidSignature(f"timestamp must be Unix seconds, got {timestamp!r}") from None
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance_seconds:
        raise InvalidSignature(
            f"timestamp {sent_at} is more than {tolerance_seconds:g} s away from now "
            f"({current:.0f}): stale or replayed"
        )
    if not signature.startswith(SCHEME):
        raise InvalidSignature(f"signature must start with {SCHEME!r}, got {signature[:16]!r}")
    if not hmac.compare_digest(signature.encode(), sign(secret, timestamp, body).encode()):
        raise InvalidSignature("signature does not match the body and the secret")


def verify_request(
    secret: str,
    headers: Headers,
    body: bytes,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """`verify` with the timestamp and signature taken from the request's headers (any case)."""
    by_name = {name.lower(): str(value) for name, value in headers.items()}
    missing = [h for h in (TIMESTAMP_HEADER, SIGNATURE_HEADER) if h.lower() not in by_name]
    if missing:
        raise InvalidSignature(f"missing header(s): {', '.join(missing)}")
    verify(
        secret,
        by_name[TIMESTAMP_HEADER.lower()],
        by_name[SIGNATURE_HEADER.lower()],
        body,
        tolerance_seconds=tolerance_seconds,
        now=now,
    )
