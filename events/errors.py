"""Errors of the wire contract, each with a machine-readable code (the dead-letter reason)."""

from __future__ import annotations

from typing import Literal

ErrorCode = Literal[
    "invalid_json",
    "schema_violation",
    "unknown_type",
    "unsupported_version",
    "size_violation",
    "invalid_transition",
    "merge_into_self",
    "already_merged",
    "merge_into_merged",
    "unknown_customer",
    "invalid_payload",
]
"""`invalid_transition`: a valid complaint event its case cannot take in its recorded state (the
recorder and POST /events check it; `projections.complaints.transition` says why).

`merge_into_self`, `already_merged`, `merge_into_merged`, `unknown_customer`, `invalid_payload`:
a `customer.merged` event the merge rules refuse, given the merges recorded before it (the
recorder and POST /events check it; `projections.merges` says what each rule is)."""


class InvalidEvent(ValueError):
    """A touchpoint breaks the wire contract.

    `code` is one of `ErrorCode`; `field` is a dotted path into the envelope
    (`payload.items[0].unit_price`) or `""` when the whole message is at fault.
    """

    def __init__(self, code: ErrorCode, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.code: ErrorCode = code
        self.field = field
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "field": self.field, "message": self.message}
