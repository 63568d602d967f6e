"""Address normalisation: the one place that decides when two addresses are the same."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sarbot.addresses import (
    InvalidAddress,
    mask_address,
    normalize_address,
    same_address,
    sender_of,
    single_sender,
    written_forms,
)


class TestNormalize:
    @pytest.mark.parametrize(
        ("given_", "expected"),
        [
            ("alice@example.test", "alice@example.test"),
            ("  Alice@Example.TEST ", "alice@example.test"),
            ("alice@example.test.", "alice@example.test"),
            ("alice+tag@example.test", "alice+tag@example.test"),
            ("a@bücher.test", "a@xn--bcher-kva.test"),
            ("alice@example.test\u3002", "alice@example.test"),
            ("alice@example.test\u3002\u00ad", "alice@example.test"),
            ("alice@ex\u00adample.test\uff0e", "alice@example.test"),
        ],
    )
    def test_normal_forms(self, given_: str, expected: str) -> None:
        """Case, spaces, a trailing dot and IDN domains normalise; a full stop of another
        script ends the domain as "." does, with a soft hyphen (dropped by UTS #46) after it."""
        assert normalize_address(given_) == expected

    @pytest.mark.parametrize(
        ("given_", "expected"),
        [
            ("alice@straße.de", "alice@xn--strae-oqa.de"),
            ("alice@STRASSE.de", "alice@strasse.de"),
            ("alice@xn--strae-oqa.de", "alice@xn--strae-oqa.de"),
            ("alice@faß.de", "alice@xn--fa-hia.de"),
            ("alice@ς.gr", "alice@xn--3xa.gr"),
            ("alice@\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.test", "alice@example.test"),
        ],
    )
    def test_idna_2008_keeps_deviation_characters(self, given_: str, expected: str) -> None:
        """UTS #46 non-transitional: ß and ς stay themselves; full-width letters map to ASCII."""
        assert normalize_address(given_) == expected

    def test_sharp_s_and_double_s_are_two_domains(self) -> None:
        """straße.de and strasse.de are registered separately: never the same address."""
        assert normalize_address("alice@straße.de") != normalize_address("alice@strasse.de")
        assert not same_address("alice@strasse.de", normalize_address("alice@straße.de"))
        assert same_address("ALICE@Straße.de", normalize_address("alice@straße.de"))
        assert not same_address(None, "alice@example.test")
        assert not same_address("not an address", "alice@example.test")

    def test_written_forms_of_an_idn_address(self) -> None:
        """A store may hold the Unicode form: both are searched for; an ASCII one is one form."""
        assert written_forms("alice@xn--strae-oqa.de") == [
            "alice@xn--strae-oqa.de",
            "alice@straße.de",
        ]
        assert written_forms("alice@example.test") == ["alice@example.test"]

    def test_lookalike_domains_stay_different(self) -> None:
        """A Cyrillic letter in the domain does not become the Latin one it looks like."""
        lookalike = "alice@ex\u0430mple.test"
        assert normalize_address(lookalike) != normalize_address("alice@example.test")

    @pytest.mark.parametrize(
        "bad",
        [
            "",
            "alice",
            "@example.test",
            "alice@",
            '"a b"@example.test',
            "álice@example.test",
            "alice@localhost",
            "a..b@example.test",
            "alice@-x.test",
            "alice@ex\u200dample.de",
            "alice@ex_ample.test",
        ],
    )
    def test_unusual_addresses_are_refused(self, bad: str) -> None:
        """Quoted, non-ASCII local parts and malformed domains are refused."""
        with pytest.raises(InvalidAddress):
            normalize_address(bad)


class TestSingleSender:
    def test_display_name_is_ignored(self) -> None:
        """An address in the display name is not the sender."""
        assert single_sender('"alice@example.test" <mallory@evil.test>') == "mallory@evil.test"

    def test_encoded_display_name(self) -> None:
        """An encoded display name does not affect the address."""
        assert single_sender("=?utf-8?q?Al=C3=AFce?= <Alice@Example.test>") == "alice@example.test"

    @pytest.mark.parametrize(
        "header",
        [
            "=?utf-8?q?alice=40example.test?= <mallory@evil.test>",
            "=?utf-8?b?YWxpY2VAZXhhbXBsZS50ZXN0?= <mallory@evil.test>",
            "=?utf-8?q?alice=40example.test_=3Calice=40example.test=3E?= <mallory@evil.test>",
        ],
    )
    def test_an_encoded_word_is_only_ever_a_display_name(self, header: str) -> None:
        """The field as written names mallory; decoding first would have named alice."""
        assert single_sender(header) == "mallory@evil.test"

    @pytest.mark.parametrize(
        "header",
        [
            "alice@example.test <mallory@evil.test>",
            "=?utf-8?q?alice?=@example.test",
            "Alice <alice@example.test",
            "Alice <alice@example.test> mallory@evil.test",
        ],
        ids=["unquoted address as name", "encoded local part", "open angle", "trailing address"],
    )
    def test_a_malformed_field_is_refused_not_guessed_at(self, header: str) -> None:
        """What the parser has to repair names no one."""
        with pytest.raises(InvalidAddress, match="malformed From header"):
            single_sender(header)

    def test_a_folded_field_is_unfolded(self) -> None:
        """A display name folded onto two lines is still one mailbox."""
        assert single_sender("Alice Liddell\r\n <Alice@Example.test>") == "alice@example.test"

    def test_a_second_from_field_is_refused(self) -> None:
        """Two From fields are refused, even when both name the same address."""
        assert sender_of(["alice@example.test"]) == "alice@example.test"
        for fields in (["alice@example.test", "mallory@evil.test"], ["a@example.test"] * 2):
            with pytest.raises(InvalidAddress, match="more than one From header"):
                sender_of(fields)
        with pytest.raises(InvalidAddress, match="no From header"):
            sender_of([])

    @pytest.mark.parametrize(
        "header", [None, "", "a@example.test, b@example.test", "undisclosed-recipients:;", "nobody"]
    )
    def test_anything_but_one_mailbox_is_refused(self, header: str | None) -> None:
        """No sender, several senders or a group is not an identity."""
        with pytest.raises(InvalidAddress):
            single_sender(header)

    @given(st.text(max_size=200))
    def test_never_raises_anything_else(self, header: str) -> None:
        """Any header text gives an address or InvalidAddress."""
        try:
            result = single_sender(header)
        except InvalidAddress:
            return
        assert result == normalize_address(result)


def test_mask() -> None:
    """Logs carry only the first letter of the local part."""
    assert mask_address("alice@example.test") == "a***@example.test"
    assert mask_address("garbage") == "***"
