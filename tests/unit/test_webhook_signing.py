"""Webhook signatures: what the dispatcher signs and what receivers accept."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.webhooks import InvalidSignature, sign, verify, verify_request

SECRET = "whsec_0123456789abcdef"
SENT_AT = 1_767_261_600
BODY = b'{"a":1}'
# printf '1767261600.{"a":1}' | openssl dgst -sha256 -hmac 'whsec_0123456789abcdef'
OPENSSL_DIGEST = "c90467a627056c58220996b3242c08e608946aad2e54bd37988baa6f89430a02"


def test_the_signature_is_the_hmac_sha256_of_timestamp_dot_body() -> None:
    assert sign(SECRET, SENT_AT, BODY) == f"sha256={OPENSSL_DIGEST}"
    assert sign(SECRET, str(SENT_AT), BODY) == f"sha256={OPENSSL_DIGEST}"


@given(secret=st.text(min_size=1), body=st.binary(), skew=st.integers(-300, 300))
def test_a_signed_request_verifies_within_the_tolerance(
    secret: str, body: bytes, skew: int
) -> None:
    verify(secret, str(SENT_AT), sign(secret, SENT_AT, body), body, now=SENT_AT + skew)


@pytest.mark.parametrize(
    ("secret", "timestamp", "body", "reason"),
    [
        ("whsec_another_secret_0", str(SENT_AT), BODY, "does not match"),
        (SECRET, str(SENT_AT), b'{"a":2}', "does not match"),
        (SECRET, str(SENT_AT + 1), BODY, "does not match"),
    ],
)
def test_another_secret_body_or_timestamp_is_rejected(
    secret: str, timestamp: str, body: bytes, reason: str
) -> None:
    with pytest.raises(InvalidSignature, match=reason):
        verify(secret, timestamp, sign(SECRET, SENT_AT, BODY), body, now=SENT_AT)


@pytest.mark.parametrize("skew", [-301, 301, 86_400])
def test_a_stale_or_future_timestamp_is_rejected_even_when_signed(skew: int) -> None:
    signature = sign(SECRET, SENT_AT, BODY)

    with pytest.raises(InvalidSignature, match="stale or replayed"):
        verify(SECRET, str(SENT_AT), signature, BODY, now=SENT_AT + skew)


def test_the_tolerance_can_be_widened() -> None:
    signature = sign(SECRET, SENT_AT, BODY)

    verify(SECRET, str(SENT_AT), signature, BODY, tolerance_seconds=3600, now=SENT_AT + 3000)


@pytest.mark.parametrize(
    ("timestamp", "signature", "reason"),
    [
        ("yesterday", f"sha256={OPENSSL_DIGEST}", "Unix seconds"),
        (str(SENT_AT), OPENSSL_DIGEST, "must start with 'sha256='"),
        (str(SENT_AT), f"sha1={OPENSSL_DIGEST}", "must start with 'sha256='"),
        (str(SENT_AT), "sha256=", "does not match"),
    ],
)
def test_malformed_headers_are_rejected_with_a_reason(
    timestamp: str, signature: str, reason: str
) -> None:
    with pytest.raises(InvalidSignature, match=reason):
        verify(SECRET, timestamp, signature, BODY, now=SENT_AT)


def test_headers_are_read_in_any_case() -> None:
    headers = {"x-crm-timestamp": str(SENT_AT), "X-CRM-SIGNATURE": f"sha256={OPENSSL_DIGEST}"}

    verify_request(SECRET, headers, BODY, now=SENT_AT)


def test_a_request_without_the_headers_is_rejected() -> None:
    with pytest.raises(InvalidSignature, match=r"missing header\(s\): X-CRM-Signature$"):
        verify_request(SECRET, {"X-CRM-Timestamp": str(SENT_AT)}, BODY, now=SENT_AT)
