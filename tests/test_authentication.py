"""DMARC alignment with the Public Suffix List, and which Authentication-Results count.

Pure decisions on parsed mail; the same rules on the real mail stack are in
tests/test_abuse.py.
"""

from __future__ import annotations

import pytest

from sarbot.config import VerificationSettings
from sarbot.mail.authentication import UNREADABLE_RESULTS, aligned, evaluate, organisational_domain
from sarbot.mail.message import IncomingMail, parse_headers


class TestOrganisationalDomain:
    @pytest.mark.parametrize(
        ("domain", "organisation"),
        [
            ("example.co.uk", "example.co.uk"),
            ("mail.example.co.uk", "example.co.uk"),
            ("a.b.mail.example.co.uk", "example.co.uk"),
            ("Mail.Example.CO.UK.", "example.co.uk"),
            ("example.com", "example.com"),
            ("mail.example.com.au", "example.com.au"),
            ("www.example.ltd.uk", "example.ltd.uk"),
            ("alice.github.io", "alice.github.io"),  # the list's private section counts too
        ],
    )
    def test_one_label_below_the_longest_public_suffix(
        self, domain: str, organisation: str
    ) -> None:
        """RFC 7489 section 3.2: the longest public suffix that matches, plus one label."""
        assert organisational_domain(domain) == organisation

    @pytest.mark.parametrize("suffix", ["uk", "co.uk", "com.au", "github.io", "com"])
    def test_a_public_suffix_has_none(self, suffix: str) -> None:
        """A public suffix is nobody's organisation."""
        assert organisational_domain(suffix) is None

    def test_an_unknown_top_level_domain_follows_the_default_rule(self) -> None:
        """A TLD the list does not name is a public suffix of one label (the rule ``*``)."""
        assert organisational_domain("mail.example.test") == "example.test"
        assert organisational_domain("a.b.example.notarealtld") == "example.notarealtld"
        assert organisational_domain("notarealtld") is None


class TestAlignment:
    def test_a_subdomain_aligns_relaxed_under_a_two_label_suffix(self) -> None:
        """mail.example.co.uk and example.co.uk are one organisation."""
        assert aligned("mail.example.co.uk", "example.co.uk", "relaxed")
        assert aligned("example.co.uk", "mail.example.co.uk", "relaxed")

    def test_siblings_under_a_public_suffix_do_not_align(self) -> None:
        """example.co.uk is not evil.co.uk, nor is alice.github.io bob.github.io."""
        assert not aligned("evil.co.uk", "example.co.uk", "relaxed")
        assert not aligned("bob.github.io", "alice.github.io", "relaxed")
        assert not aligned("evil.com.au", "example.com.au", "relaxed")
        assert not aligned("evil.gov.au", "example.gov.au", "relaxed")
        assert not aligned("evil.ac.jp", "example.ac.jp", "relaxed")

    @pytest.mark.parametrize("suffix", ["co.uk", "uk", "CO.UK."])
    def test_a_public_suffix_signature_never_aligns(self, suffix: str) -> None:
        """A signature by co.uk authenticates no one under it, in either mode."""
        for mode in ("relaxed", "strict"):
            assert not aligned(suffix, "example.co.uk", mode)
            assert not aligned(suffix, "mail.example.co.uk", mode)

    def test_strict_needs_the_same_domain(self) -> None:
        """Strict alignment: equal domains only (case and a final dot aside)."""
        assert aligned("Example.CO.uk.", "example.co.uk", "strict")
        assert not aligned("mail.example.co.uk", "example.co.uk", "strict")
        assert not aligned("example.co.uk", "mail.example.co.uk", "strict")

    def test_an_unknown_top_level_domain_aligns_by_its_last_two_labels(self) -> None:
        """Under the default rule ``*``, mail.example.test aligns with example.test (relaxed)."""
        assert aligned("mail.example.test", "example.test", "relaxed")
        assert not aligned("evil.test", "example.test", "relaxed")
        assert not aligned("test", "example.test", "relaxed")

    def test_nothing_aligns_with_nothing(self) -> None:
        """An empty or missing signing domain is no alignment."""
        assert not aligned("", "example.test", "relaxed")
        assert not aligned(".", "example.test", "relaxed")


TRUSTING = VerificationSettings(trusted_authserv_ids=("mail.redtrain.test",))


def headed(*results: str) -> IncomingMail:
    """A request mail from alice@example.test carrying these Authentication-Results fields."""
    head = "".join(f"Authentication-Results: {value}\r\n" for value in results)
    return parse_headers(
        f"{head}From: alice@example.test\r\nSubject: GDPR DATA REQUEST\r\n\r\nhi\r\n".encode()
    )


class TestTrustedResults:
    def test_the_trusted_verifiers_aligned_pass_authenticates(self) -> None:
        """The one header with the trusted id, dkim=pass for the From domain: authenticated."""
        evidence = evaluate(
            headed("(ours) mail.redtrain.test 1;\r\n dkim=pass header.d=example.test"),
            "alice@example.test",
            TRUSTING,
        )
        assert (evidence.aligned_dkim, evidence.suspicious) == (True, "")

    @pytest.mark.parametrize(
        "authserv_id", ["=?utf-8?q?mail.redtrain.test?=", "=?utf-8?b?bWFpbC5yZWR0cmFpbi50ZXN0?="]
    )
    def test_an_encoded_authserv_id_is_not_the_trusted_one(self, authserv_id: str) -> None:
        """Trust is decided on the id as written: an encoded word is somebody else's header."""
        mail = headed(f"{authserv_id}; dkim=pass header.d=example.test")
        evidence = evaluate(mail, "alice@example.test", TRUSTING)
        assert (evidence.aligned_dkim, evidence.suspicious) == (False, "")
        assert evidence.summary == "no trusted authentication results"

    @pytest.mark.parametrize(
        "value",
        [
            "mail.redtrain.test; dkim",
            "mail.redtrain.test; dkim=pass header.d=example.test;;",
            '"mail.redtrain.test"; dkim=pass header.d=example.test',
            "mail.redtrain.test",
        ],
        ids=["no result", "empty resinfo", "quoted id", "nothing after the id"],
    )
    def test_an_unreadable_trusted_header_is_suspicious(self, value: str) -> None:
        """A trusted verifier's header that cannot be parsed is not skipped: a person looks."""
        evidence = evaluate(headed(value), "alice@example.test", TRUSTING)
        assert not evidence.aligned_dkim
        assert evidence.suspicious == UNREADABLE_RESULTS

    def test_an_unreadable_header_of_another_id_is_ignored(self) -> None:
        """Anyone can write a broken header under their own id: it counts for nothing."""
        mail = headed("evil.test; dkim", "mail.redtrain.test; dkim=none")
        evidence = evaluate(mail, "alice@example.test", TRUSTING)
        assert (evidence.aligned_dkim, evidence.suspicious) == (False, "")
        assert evidence.summary == "no aligned DKIM pass (mail.redtrain.test: dkim=none)"

    def test_a_readable_and_an_unreadable_trusted_header_are_two(self) -> None:
        """Two headers with the trusted id, one of them broken: one is forged."""
        mail = headed("mail.redtrain.test; dkim=pass header.d=example.test", "mail.redtrain.test")
        evidence = evaluate(mail, "alice@example.test", TRUSTING)
        assert not evidence.aligned_dkim
        assert evidence.suspicious.startswith("more than one Authentication-Results header")
