"""Challenge tokens and codes."""

from __future__ import annotations

import math

from sarbot.mail.challenge import (
    CODE_ALPHABET,
    challenge_message_id,
    cited_tokens,
    matches,
    new_challenge,
    quoted_codes,
)


class TestChallenge:
    def test_token_has_at_least_128_bits(self) -> None:
        """The token is unguessable: 32 URL-safe characters, 192 bits."""
        challenge = new_challenge()
        assert len(challenge.token) * math.log2(64) >= 128

    def test_challenges_differ(self) -> None:
        """Every challenge is fresh."""
        assert len({new_challenge().token for _ in range(100)}) == 100

    def test_only_hashes_match(self) -> None:
        """The stored hash matches the plain value, and nothing else."""
        challenge = new_challenge()
        assert matches(challenge.token, challenge.token_hash)
        assert matches(challenge.code, challenge.code_hash)
        last = "y" if challenge.token.endswith("x") else "x"
        assert not matches(challenge.token[:-1] + last, challenge.token_hash)
        assert challenge.token not in challenge.token_hash

    def test_code_uses_an_unambiguous_alphabet(self) -> None:
        """No 0/O or 1/I/L to misread."""
        code = new_challenge().code
        assert len(code) == 9 and code[4] == "-"
        assert set(code.replace("-", "")) <= set(CODE_ALPHABET)


class TestCitations:
    def test_token_is_read_back_from_the_message_id(self) -> None:
        """A cited acknowledgement Message-ID gives back its reference and token."""
        challenge = new_challenge()
        message_id = challenge_message_id("SAR-2026-48213907", challenge.token, "redtrain.test")
        [cited] = cited_tokens((message_id.strip("<>"),), "redtrain.test")
        assert (cited.reference, cited.token) == ("SAR-2026-48213907", challenge.token)

    def test_other_domains_are_ignored(self) -> None:
        """A token-shaped id on another domain is not ours."""
        challenge = new_challenge()
        message_id = challenge_message_id("SAR-2026-48213907", challenge.token, "evil.test")
        assert cited_tokens((message_id.strip("<>"),), "redtrain.test") == []

    def test_quoted_codes_are_limited(self) -> None:
        """One message can offer only a few codes, so it cannot guess many."""
        text = " ".join(f"ABCD-EF{a}{b}" for a in "2345" for b in "6789")
        assert len(quoted_codes(text)) == 3
        assert quoted_codes("code: abcd-efgh") == []
