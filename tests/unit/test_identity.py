"""Identity: phone numbers to E.164, e-mail normalization, placeholders that never match, and
the identifiers each recorded event gives its customer."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projections.identity import (
    Identifier,
    identifiers_of,
    is_placeholder,
    normalize_email,
    normalize_phone,
)
from projections.recorded import RecordedEvent, from_wire
from tests.unit.examples import envelope


def recorded(type_: str, payload: dict[str, Any] | None = None) -> RecordedEvent:
    data = envelope(type_, payload, event_id=str(uuid.uuid4()))
    return from_wire(data | {"position": 1, "version": 1})


# --- phones --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "+44 20 7946 0000",
        "+442079460000",
        "020 7946 0000",
        "(020) 7946-0000",
        "020.7946.0000",
        "0044 20 7946 0000",
        "+44 (0)20 7946 0000",
        "tel:+44-20-7946-0000",
        "  +44 20 7946 0000  ",
        "+44 20 7946 0000 ext. 12",
    ],
)
def test_differently_formatted_numbers_of_one_phone_normalize_equal(text: str) -> None:
    assert normalize_phone(text, "GB") == "+442079460000"


@pytest.mark.parametrize(
    "text", ["+49 30 12345678", "030 12345678", "030/12345678", "0049 (0)30 1234 5678"]
)
def test_german_formats_normalize_equal_in_region_de(text: str) -> None:
    assert normalize_phone(text, "DE") == "+493012345678"


def test_an_international_number_ignores_the_default_region() -> None:
    assert normalize_phone("+1 202 555 0143", "DE") == "+12025550143"


def test_the_same_national_digits_are_different_numbers_in_different_regions() -> None:
    assert normalize_phone("030 12345678", "DE") == "+493012345678"
    assert normalize_phone("030 12345678", "GB") != "+493012345678"


def test_the_region_is_case_insensitive() -> None:
    assert normalize_phone("020 7946 0000", "gb") == "+442079460000"


def test_an_unknown_region_fails_loudly() -> None:
    with pytest.raises(ValueError, match="ISO 3166"):
        normalize_phone("020 7946 0000", "XX")


@pytest.mark.parametrize(
    "text",
    ["123", "+44 20 7946", "+44 20 7946 0000 0000 0000", "call me", "+999 1234 5678", "+44 abc"],
)
def test_numbers_that_do_not_parse_or_are_not_valid_give_none(text: str) -> None:
    assert normalize_phone(text, "GB") is None


@pytest.mark.parametrize(
    "text",
    [
        None, "", "   ", "-", "--", "?", "0", "0000000", "000 000 0000", "1111111",
        "+44 0000000000", "+49 111 1111111", "9999999999", "unknown", "UNKNOWN", "n/a", "N/A",
        "na", "none", "None", "null", "NULL", "tbd", "not available", "no phone",
    ],
)  # fmt: skip
def test_placeholder_phones_never_normalize(text: str | None) -> None:
    assert normalize_phone(text, "GB") is None


@pytest.mark.parametrize("text", ["+1 234 567 8901", "+33 1 23 45 67 89", "+49 98765432"])
def test_numbers_that_are_a_run_of_digits_are_placeholders(text: str) -> None:
    assert normalize_phone(text, "GB") is None


GB_NUMBERS = ("2079460000", "1614960000", "7911123456", "1174960123")


@given(
    national=st.sampled_from(GB_NUMBERS),
    prefix=st.sampled_from(["+44", "+44 ", "0044 ", "0", "+44 (0)", "0044(0)"]),
    separators=st.lists(st.sampled_from(["", "", " ", "-", "."]), min_size=10, max_size=10),
    padding=st.sampled_from(["", " ", "\t"]),
)
def test_any_punctuation_of_a_valid_number_normalizes_to_its_e164(
    national: str, prefix: str, separators: list[str], padding: str
) -> None:
    spelled = "".join(digit + sep for digit, sep in zip(national, separators, strict=True))
    text = padding + prefix + spelled.strip(" -.") + padding

    assert normalize_phone(text, "GB") == "+44" + national


@given(st.text(max_size=40))
def test_a_normalized_phone_normalizes_to_itself(text: str) -> None:
    once = normalize_phone(text, "GB")

    assert once is None or (once.startswith("+") and normalize_phone(once, "US") == once)


# --- placeholders --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "  ", "-", "unknown", " Unknown ", "N/A", "none", "null", "0000000", "1111111", "(  )"],
)
def test_placeholders(text: str) -> None:
    assert is_placeholder(text)


@pytest.mark.parametrize("text", ["020 7946 0000", "0112", "ada@example.com", "Ada", "none at all"])
def test_real_values_are_not_placeholders(text: str) -> None:
    assert not is_placeholder(text)


# --- e-mail --------------------------------------------------------------------------------


def test_an_email_is_stripped_and_lower_cased() -> None:
    assert normalize_email("  Ada.Lovelace@Example.COM\n") == "ada.lovelace@example.com"


def test_dots_and_plus_tags_are_kept() -> None:
    assert normalize_email("Ada.L+shop@Mail.de") == "ada.l+shop@mail.de"
    assert normalize_email("adal@mail.de") != normalize_email("ada.l@mail.de")


def test_a_trailing_dot_of_the_domain_is_dropped() -> None:
    assert normalize_email("ada@mail.de.") == "ada@mail.de"


@pytest.mark.parametrize(
    "text", [None, "", "ada", "ada@", "@mail.de", "ada@mail", "a b@mail.de", "a@b@mail.de"]
)
def test_what_is_not_an_address_gives_none(text: str | None) -> None:
    assert normalize_email(text) is None


def test_an_address_longer_than_254_characters_gives_none() -> None:
    assert normalize_email("a" * 250 + "@x.de") is None


@pytest.mark.parametrize(
    "text",
    [
        "test@test.com", "TEST@TEST.COM", "noemail@shop.de", "no-email@shop.de", "none@shop.de",
        "unknown@shop.de", "noreply@shop.de", "someone@noemail.com", "someone@test.com",
        "ada@host.invalid", "ada@shop.test", "ada@localhost.localhost", "xxx@shop.de",
        "000@shop.de", "n/a@shop.de",
    ],
)  # fmt: skip
def test_placeholder_emails_never_normalize(text: str) -> None:
    assert normalize_email(text) is None


@pytest.mark.parametrize("text", ["info@acme.de", "sales@acme.co.uk", "ada@example.com"])
def test_role_and_example_addresses_are_kept(text: str) -> None:
    assert normalize_email(text) == text


@given(st.emails())
def test_normalizing_an_email_twice_changes_nothing(text: str) -> None:
    once = normalize_email(text)

    assert once is None or normalize_email(once) == once
    assert normalize_email(text.upper()) == once or once is None


# --- identifiers of events -----------------------------------------------------------------


def test_a_registration_gives_its_phone_and_email() -> None:
    event = recorded(
        "customer.registered", {"name": "Ada", "email": " Ada@Mail.DE ", "phone": "020 7946 0000"}
    )

    assert identifiers_of(event, "GB") == (
        Identifier("phone", "+442079460000", "customer.registered"),
        Identifier("email", "ada@mail.de", "customer.registered"),
    )


def test_an_update_gives_only_the_identifiers_it_carries() -> None:
    assert identifiers_of(recorded("customer.updated", {"email": "ada@mail.de"}), "GB") == (
        Identifier("email", "ada@mail.de", "customer.updated"),
    )
    assert identifiers_of(recorded("customer.updated", {"email": None, "name": "Ada"}), "GB") == ()


def test_placeholders_and_invalid_values_give_no_identifier() -> None:
    event = recorded(
        "customer.registered", {"name": "Ada", "email": "test@test.com", "phone": "0000000"}
    )

    assert identifiers_of(event, "GB") == ()


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
def test_a_call_gives_the_customers_phone_in_either_direction(direction: str) -> None:
    payload = {"direction": direction, "phone": "+44 20 7946 0000", "duration_seconds": 30}

    assert identifiers_of(recorded("call.logged", payload), "DE") == (
        Identifier("phone", "+442079460000", "call.logged"),
    )


def test_a_call_without_a_phone_gives_nothing() -> None:
    payload = {"direction": "inbound", "duration_seconds": 30}

    assert identifiers_of(recorded("call.logged", payload), "GB") == ()


def test_an_email_gives_its_address() -> None:
    payload = {"direction": "inbound", "subject": "Hello", "address": "Ada@Mail.de"}

    assert identifiers_of(recorded("email.logged", payload), "GB") == (
        Identifier("email", "ada@mail.de", "email.logged"),
    )


@pytest.mark.parametrize("type_", ["web.visited", "purchase.made", "complaint.filed"])
def test_other_events_give_no_identifier(type_: str) -> None:
    assert identifiers_of(recorded(type_), "GB") == ()
