"""Identity for the screen pop: normalized phone numbers and e-mail addresses, and the
identifiers each recorded event gives its customer. Pure: no I/O, no settings read here.

Rules:

- **Phones** become E.164 (`+442079460000`) with `phonenumbers` (Google's libphonenumber
  metadata). A number without a `+`/international prefix is read in `default_region` (an ISO
  3166 alpha-2 code, a setting of the caller; an unknown code raises ValueError, so a bad setting
  fails loudly instead of matching nothing). Extensions are dropped. A number that does not parse,
  or that libphonenumber does not hold possible *and* valid for its country, gives None.
- **E-mail addresses** are stripped of surrounding white space and lower-cased as a whole. The
  local part is case-sensitive by RFC 5321, but no mailbox provider treats it so and people type
  it in any case. Nothing provider-specific is done (Gmail's dots and `+tags` are left alone: for
  other providers they are different mailboxes). Anything that does not match the wire contract's
  address pattern (`events.fields.EMAIL_PATTERN`, at most 254 characters) gives None.
- **Placeholders** never match and never merge, so they normalize to None (see `is_placeholder`,
  `PLACEHOLDER_TEXTS`, `PLACEHOLDER_LOCAL_PARTS`, `PLACEHOLDER_DOMAINS`, `RESERVED_TLDS`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import phonenumbers

from events.fields import EMAIL_PATTERN
from projections.recorded import RecordedEvent

IdentifierKind = Literal["phone", "email"]

PLACEHOLDER_TEXTS = frozenset(
    {
        "", "-", "--", "---", ".", "?", "x", "xx", "xxx", "na", "n/a", "n.a.", "n.a", "nan",
        "none", "null", "nil", "unknown", "unk", "tbd", "tba", "not available", "not known",
        "no phone", "no email", "no e-mail", "no number", "missing", "test", "dummy", "fake",
    }
)  # fmt: skip
"""Values (compared stripped, lower-cased, inner white space collapsed) meaning "no value"."""

PLACEHOLDER_LOCAL_PARTS = frozenset(
    {
        "none", "null", "nil", "na", "n/a", "unknown", "noemail", "no-email", "no_email",
        "nomail", "no-mail", "noone", "no-one", "nobody", "test", "fake", "dummy", "asdf",
        "noreply", "no-reply", "no_reply", "donotreply", "do-not-reply", "do_not_reply",
        "x", "xx", "xxx",
    }
)  # fmt: skip
"""Local parts (before the "@") of fake, shared or no-reply addresses: `test@test.com`,
`noemail@shop.de`, `noreply@anything`. Role addresses (`info@`, `sales@`) are kept: for a
business customer they are the customer's address."""

PLACEHOLDER_DOMAINS = frozenset(
    {"test.com", "none.com", "noemail.com", "nomail.com", "unknown.com", "fake.com", "dummy.com"}
)
"""Domains typed in when there is no address (`someone@noemail.com`)."""

RESERVED_TLDS = frozenset({"test", "invalid", "localhost", "example"})
"""Top-level domains that never deliver (RFC 2606, RFC 6761). `example.com/.org/.net` are not
treated as placeholders: this project's examples and tests give customers such addresses, and
a real customer never has one."""

SEQUENCE_MIN_DIGITS = 6
_ASCENDING = "01234567890123456789"
_DESCENDING = "98765432109876543210"
_EMAIL = re.compile(EMAIL_PATTERN)
_NOT_DIGITS = re.compile(r"\D")
_PHONE_LIKE = re.compile(r"[0-9+\-./() ]+")
_E164 = phonenumbers.PhoneNumberFormat.E164


@dataclass(frozen=True, slots=True)
class Identifier:
    """A normalized identifier, the kind it is and the event type it came from (what a lookup
    shows as why a customer matched)."""

    kind: IdentifierKind
    value: str
    source: str


def is_placeholder(text: str) -> bool:
    """Whether `text` stands for "no value": one of `PLACEHOLDER_TEXTS` (stripped, lower-cased,
    inner white space collapsed), or only phone punctuation and at most one distinct digit
    (`0000000`, `+1 111 111`, `(  )`)."""
    folded = " ".join(text.split()).lower()
    if folded in PLACEHOLDER_TEXTS:
        return True
    if not _PHONE_LIKE.fullmatch(folded):
        return False
    return len(set(_NOT_DIGITS.sub("", folded))) <= 1


@lru_cache(maxsize=65_536)  # pure; the same customers call from the same numbers
def normalize_phone(text: str | None, default_region: str) -> str | None:
    """`text` as an E.164 number, or None when it is missing, a placeholder, does not parse,
    or is not a possible and valid number (see the module docstring).

    Also placeholders after parsing: a national number that is one repeated digit, or a run of
    at least `SEQUENCE_MIN_DIGITS` consecutive digits up or down (`123456789`, `9876543`)."""
    region = _region(default_region)
    if text is None or is_placeholder(text):
        return None
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not (phonenumbers.is_possible_number(number) and phonenumbers.is_valid_number(number)):
        return None
    national = phonenumbers.national_significant_number(number)
    if len(set(national)) == 1 or _is_run(national):
        return None
    return phonenumbers.format_number(number, _E164)


def normalize_email(text: str | None) -> str | None:
    """`text` stripped and lower-cased, or None when it is missing, not an address, or a
    placeholder: a local part in `PLACEHOLDER_LOCAL_PARTS`, a domain in `PLACEHOLDER_DOMAINS`, or
    a top-level domain in `RESERVED_TLDS`."""
    if text is None:
        return None
    address = text.strip().lower()
    if len(address) > 254 or not _EMAIL.fullmatch(address):
        return None
    local, _, domain = address.rpartition("@")
    domain = domain.rstrip(".")
    tld = domain.rpartition(".")[2]
    if (
        local in PLACEHOLDER_LOCAL_PARTS
        or domain in PLACEHOLDER_DOMAINS
        or tld in RESERVED_TLDS
        or is_placeholder(local)
    ):
        return None
    return f"{local}@{domain}"


_FIELDS: dict[str, tuple[tuple[str, IdentifierKind], ...]] = {
    "customer.registered": (("phone", "phone"), ("email", "email")),
    "customer.updated": (("phone", "phone"), ("email", "email")),
    "call.logged": (("phone", "phone"),),
    "email.logged": (("address", "email"),),
}
"""Which payload field of which event type is which kind of identifier of the customer."""


def identifiers_of(event: RecordedEvent, default_region: str) -> tuple[Identifier, ...]:
    """The identifiers `event` gives its customer (`event.envelope.customer_id`), normalized,
    without placeholders or values that do not normalize, in payload-field order.

    - `customer.registered`, `customer.updated`: `phone` and `email` (an update without them, or
      with null, gives nothing: absent fields keep their value).
    - `call.logged`: `phone`, the customer's end of the call in either direction (the caller of
      an inbound call, the number dialled for an outbound one).
    - `email.logged`: `address`, the customer's address (sender of an inbound e-mail, recipient
      of an outbound one).

    Calls and e-mails count only "when the customer is known": every recorded event names its
    customer, so the identifier is the event's customer's; a department that does not know who
    called logs no phone on someone else's id. Other event types give nothing."""
    fields = _FIELDS.get(event.envelope.type, ())
    payload = event.envelope.payload
    found: list[Identifier] = []
    for name, kind in fields:
        value = _normalized(kind, payload.get(name), default_region)
        if value is not None:
            identifier = Identifier(kind, value, event.envelope.type)
            if identifier not in found:
                found.append(identifier)
    return tuple(found)


def rejection(kind: IdentifierKind, text: str, default_region: str) -> str | None:
    """Why `text` is no identifier of `kind` (None when it normalizes): "a placeholder" or
    what it is not, for a person to read."""
    if kind == "phone":
        if normalize_phone(text, default_region) is not None:
            return None
        if is_placeholder(text):
            return "a placeholder, not a phone number"
        try:
            number = phonenumbers.parse(text, _region(default_region))
        except phonenumbers.NumberParseException:
            return f"not a phone number (read in region {_region(default_region)})"
        if not (phonenumbers.is_possible_number(number) and phonenumbers.is_valid_number(number)):
            return f"not a valid phone number (read in region {_region(default_region)})"
        return "a placeholder (one repeated digit or a run of consecutive digits)"
    if normalize_email(text) is not None:
        return None
    address = text.strip().lower()
    if len(address) > 254 or not _EMAIL.fullmatch(address):
        return "not an e-mail address"
    return "a placeholder e-mail address (no-reply, test or reserved domain)"


def _normalized(kind: IdentifierKind, value: Any, default_region: str) -> str | None:
    if not isinstance(value, str):
        return None
    return normalize_phone(value, default_region) if kind == "phone" else normalize_email(value)


def _region(code: str) -> str:
    region = code.strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"expected an ISO 3166 alpha-2 region such as 'DE', got {code!r}")
    return region


def _is_run(digits: str) -> bool:
    return len(digits) >= SEQUENCE_MIN_DIGITS and (digits in _ASCENDING or digits in _DESCENDING)
