"""Which messages are requests, which are replies, and which are left alone."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sarbot.mail.message import parse_headers, parse_message
from sarbot.steps.classify import Classifier, Kind, strip_prefixes

CLASSIFIER = Classifier(
    own_address="support@redtrain.test",
    message_id_domain="redtrain.test",
    phrase="GDPR DATA REQUEST",
    prefix="SAR",
)


def mail(subject: str | None, *extra: str, sender: str = "alice@example.test") -> bytes:
    lines = [f"From: {sender}", "To: support@redtrain.test", "Message-ID: <m1@example.test>"]
    if subject is not None:
        lines.append(f"Subject: {subject}")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\nbody\r\n").encode()


def kind(raw: bytes) -> Kind:
    return CLASSIFIER.classify(parse_headers(raw)).kind


class TestRequestSubjects:
    @pytest.mark.parametrize(
        "subject",
        [
            "GDPR DATA REQUEST",
            "gdpr data request",
            "  GDPR   DATA\tREQUEST  ",
            "Re: GDPR DATA REQUEST",
            "RE: Fwd: GDPR data request",
            "AW: GDPR DATA REQUEST",
            "SV: GDPR DATA REQUEST",
            "Fw: GDPR DATA REQUEST please",
            "My GDPR Data Request",
            "=?utf-8?q?GDPR_DATA_REQUEST?=",
            "=?UTF-8?B?R0RQUiBEQVRBIFJFUVVFU1Q=?=",
            "=?iso-8859-1?q?Re=3A_gdpr_data_request_f=FCr_mich?=",
            "=?utf-8?q?GDPR_DATA?= =?utf-8?q?_REQUEST?=",
        ],
    )
    def test_request_subjects_are_recognised(self, subject: str) -> None:
        """The phrase is found in any case, spacing, encoding or behind reply prefixes."""
        assert kind(mail(subject)) is Kind.REQUEST

    @pytest.mark.parametrize(
        "subject",
        [
            None,
            "",
            "GDPR",
            "DATA REQUEST",
            "GDPR-DATA-REQUEST",
            "Printer broken",
            "=?utf-8?q?broken=?=",
        ],
    )
    def test_other_subjects_are_left_alone(self, subject: str | None) -> None:
        """Anything else is unrelated: sarbot does not touch it."""
        assert kind(mail(subject)) is Kind.UNRELATED

    def test_prefixes_are_stripped(self) -> None:
        """Reply and forward prefixes in several languages go, repeated or numbered."""
        assert strip_prefixes("Re: RE[2]: Fwd: AW: SV: WG: hello") == "hello"
        assert strip_prefixes("Regarding: x") == "Regarding: x"


class TestReplies:
    def test_reply_citing_our_message_id_is_a_reply(self) -> None:
        """In-Reply-To naming sarbot's domain makes a reply, whatever the subject."""
        raw = mail("anything", "In-Reply-To: <SAR-2026-48213907.abc@redtrain.test>")
        assert kind(raw) is Kind.REPLY

    def test_reference_in_subject_is_a_reply_even_with_the_phrase(self) -> None:
        """A reply is matched before the request phrase."""
        found = CLASSIFIER.classify(parse_headers(mail("Re: GDPR DATA REQUEST [SAR-2026-0042]")))
        assert found.kind is Kind.REPLY
        assert found.references == ("SAR-2026-0042",)

    def test_citing_another_domain_is_not_a_reply(self) -> None:
        """Only sarbot's own Message-ID domain counts."""
        assert kind(mail("hello", "In-Reply-To: <x@redtrain.test.evil.test>")) is Kind.UNRELATED


class TestGuards:
    @pytest.mark.parametrize(
        ("header", "reason"),
        [
            ("Auto-Submitted: auto-replied", "auto_submitted"),
            ("Auto-Submitted: auto-generated", "auto_submitted"),
            ("Precedence: junk", "bulk_precedence"),
            ("Precedence: list", "bulk_precedence"),
            ("X-Auto-Response-Suppress: All", "header_x_auto_response_suppress"),
            ("List-Id: <x.example.test>", "header_list_id"),
            ("X-Loop: a", "header_x_loop"),
            ("X-Autorespond: yes", "header_x_autorespond"),
            ("Return-Path: <>", "null_sender"),
            ("Content-Type: multipart/report; report-type=delivery-status", "delivery_report"),
            ("X-Sarbot-Loop: support@redtrain.test", "own_mail"),
        ],
    )
    def test_automatic_mail_is_guarded(self, header: str, reason: str) -> None:
        """Mail that looks automatic is never answered."""
        found = CLASSIFIER.classify(parse_headers(mail("GDPR DATA REQUEST", header)))
        assert (found.kind, found.reason) == (Kind.GUARDED, reason)

    @pytest.mark.parametrize(
        ("sender", "reason"),
        [
            ("MAILER-DAEMON@example.test", "system_sender"),
            ("postmaster@example.test", "system_sender"),
            ("support@redtrain.test", "own_mail"),
            ("Support <SUPPORT@RedTrain.test>", "own_mail"),
        ],
    )
    def test_system_and_own_senders_are_guarded(self, sender: str, reason: str) -> None:
        """Bounce senders and sarbot's own address never get an answer."""
        found = CLASSIFIER.classify(parse_headers(mail("GDPR DATA REQUEST", sender=sender)))
        assert (found.kind, found.reason) == (Kind.GUARDED, reason)

    @pytest.mark.parametrize(
        "sender",
        [
            "=?utf-8?q?MAILER-DAEMON=40example.test?= <alice@example.test>",
            "=?utf-8?b?c3VwcG9ydEByZWR0cmFpbi50ZXN0?= <alice@example.test>",
        ],
        ids=["system sender", "own address"],
    )
    def test_an_encoded_display_name_is_not_the_sender(self, sender: str) -> None:
        """The guards judge the From address as written, not a decoded display name."""
        parsed = parse_headers(mail("GDPR DATA REQUEST", sender=sender))
        assert parsed.sender == "alice@example.test"
        assert CLASSIFIER.classify(parsed).kind is Kind.REQUEST

    def test_auto_submitted_no_is_a_person(self) -> None:
        """``Auto-Submitted: no`` is how a person's mail may say it is not automatic."""
        assert kind(mail("GDPR DATA REQUEST", "Auto-Submitted: no")) is Kind.REQUEST


class TestRobustness:
    @given(st.binary(max_size=2000))
    def test_any_bytes_classify_without_error(self, raw: bytes) -> None:
        """Arbitrary bytes parse and classify; nothing raises."""
        parsed = parse_message(raw)
        assert CLASSIFIER.classify(parsed).kind in set(Kind)

    @given(st.text(max_size=300))
    def test_any_subject_classifies_without_error(self, subject: str) -> None:
        """Arbitrary subject text, encoded words included, classifies."""
        raw = mail(subject.replace("\r", " ").replace("\n", " "))
        assert kind(raw) in set(Kind)


class TestTheSenderAsWritten:
    def test_the_sender_is_parsed_with_the_message(self) -> None:
        """Both parses carry the sender, read from the From field before any decoding."""
        raw = mail("GDPR DATA REQUEST", sender="=?utf-8?q?alice=40example.test?= <m@evil.test>")
        for parsed in (parse_headers(raw), parse_message(raw)):
            assert (parsed.sender, parsed.sender_problem) == ("m@evil.test", "")
            assert parsed.header("from") == "alice@example.test <m@evil.test>"  # decoded: a trap

    @pytest.mark.parametrize(
        ("extra", "problem"),
        [
            (("From: mallory@evil.test",), "more than one From header"),
            (("From: alice@example.test",), "more than one From header"),
        ],
        ids=["another address", "the same address"],
    )
    def test_a_second_from_field_leaves_no_sender(self, extra: tuple[str], problem: str) -> None:
        """A second From field, whatever it says, means there is no sender."""
        parsed = parse_message(mail("GDPR DATA REQUEST", *extra))
        assert (parsed.sender, parsed.sender_problem) == (None, problem)

    def test_no_from_field_no_sender(self) -> None:
        """Without a From field there is no sender, and the reason says so."""
        parsed = parse_headers(b"Subject: GDPR DATA REQUEST\r\n\r\nhi\r\n")
        assert (parsed.sender, parsed.sender_problem) == (None, "no From header")

    def test_authentication_results_are_kept_as_written(self) -> None:
        """Unfolded, in order, encoded words left as they are."""
        parsed = parse_headers(
            mail(
                "GDPR DATA REQUEST",
                "Authentication-Results: mail.redtrain.test;\r\n\tdkim=none",
                "Authentication-Results: =?utf-8?q?mail.redtrain.test?=; dkim=pass",
            )
        )
        assert parsed.authentication_results == (
            "mail.redtrain.test;\tdkim=none",
            "=?utf-8?q?mail.redtrain.test?=; dkim=pass",
        )
