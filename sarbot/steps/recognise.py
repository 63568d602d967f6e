"""Reading what a mail's words ask for: an access request in other words, or another address.

The law asks for no magic subject line: "What data do you hold about me?" is a
request too.  The recogniser reads the subject and the start of the text of
mail the classifier found unrelated, and looks for the phrases people and the
public request generators use, in English, German, French, Spanish, Italian
and Dutch (``sarbot/data/request_phrases.txt``, extended by ``[recognition]
phrases_file``).  A match is never answered by itself: it is registered as a
possible request for an operator to accept or dismiss.  Auto-replies,
bounces, list mail and sarbot's own mail are never candidates.

A request that asks for the data to go to an address other than its sender's
waits for an operator (``asks_for_another_address``).

Text and phrases are compared normalised: case folded, accents removed,
everything but letters and digits a space.  In a phrase, ``a|b`` is either
word, ``word*`` any word it begins, and ``...`` up to four words of any kind.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sarbot.addresses import InvalidAddress, normalize_address
from sarbot.mail.guards import refusal
from sarbot.mail.message import IncomingMail, parse_message
from sarbot.steps.classify import Classification, Kind

TEXT_CHARS = 4000
"""How much of the text is searched: requests say what they are at the start."""
_GAP = r"(?:\w+ ){0,4}"
_NOT_WORD = re.compile(r"[^0-9a-z]+")


_ADDRESS_RE = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+")
_REDIRECT_RE = re.compile(
    r"\b(send|sent|forward|deliver|e-?mail|mail|reply|respond|transfer|post)\w*\b.{0,80}?"
    r"\b(to|at)\b",
    re.IGNORECASE | re.DOTALL,
)
REDIRECT_REASON = "the request asks for the data to go to another address"


def asks_for_another_address(text: str, sender: str, own: str) -> bool:
    """Whether a request names an address other than its sender's where the data should go."""
    others = set()
    for found in _ADDRESS_RE.findall(text):
        try:
            address = normalize_address(found)
        except InvalidAddress:
            continue
        if address not in (sender, own):
            others.add(address)
    return bool(others) and _REDIRECT_RE.search(text) is not None


class PhraseError(ValueError):
    """A phrase line that cannot be read."""


def normalise(text: str) -> str:
    """Case folded, accents removed, one space between words of letters and digits."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    plain = plain.replace("ß", "ss").replace("ø", "o").replace("æ", "ae").replace("œ", "oe")
    return " ".join(_NOT_WORD.sub(" ", plain).split())


@dataclass(frozen=True)
class Phrase:
    text: str
    pattern: re.Pattern[str]


def compile_phrase(line: str) -> Phrase:
    """One phrase of the phrase list as a pattern over normalised text."""
    parts: list[str] = []
    for word_slot in line.split():
        if word_slot == "...":
            parts.append(_GAP)
            continue
        words = []
        for choice in word_slot.split("|"):
            prefix = choice.endswith("*")
            word = normalise(choice.rstrip("*"))
            if not word or " " in word:
                raise PhraseError(f"cannot read {word_slot!r} in {line!r}")
            words.append(re.escape(word) + (r"\w*" if prefix else ""))
        parts.append("(?:" + "|".join(words) + ") ")
    if not parts or all(part == _GAP for part in parts):
        raise PhraseError(f"no words in {line!r}")
    return Phrase(line, re.compile(r"(?<!\w)" + "".join(parts)))


def read_phrases(lines: Iterable[str]) -> list[Phrase]:
    """The phrases of a phrase file: one a line, ``#`` starts a comment."""
    return [
        compile_phrase(text) for text in (line.split("#", 1)[0].strip() for line in lines) if text
    ]


def builtin_phrases() -> list[Phrase]:
    source = resources.files("sarbot").joinpath("data/request_phrases.txt")
    return read_phrases(source.read_text(encoding="utf-8").splitlines())


def load_phrases(extra: Path | None) -> list[Phrase]:
    """The built-in phrases, and the operators' own if ``[recognition] phrases_file`` is set."""
    phrases = builtin_phrases()
    if extra is not None:
        phrases += read_phrases(extra.read_text(encoding="utf-8").splitlines())
    return phrases


@dataclass(frozen=True)
class Taken:
    """What intake takes a message for: its kind, and for a possible request the words."""

    name: str
    found: Classification
    words: str | None = None
    before_start: bool = False


class Recogniser:
    """Finds likely access requests among mail that does not say so in the agreed words."""

    def __init__(
        self,
        phrases: list[Phrase],
        *,
        own_address: str,
        subject_phrase: str,
        enabled: bool = True,
    ):
        self.phrases = phrases
        self.own_address = own_address
        self.subject_phrase = subject_phrase
        self.enabled = enabled

    def needs_text(self, head: IncomingMail, found: Classification) -> bool:
        """Must the start of this message be read to tell whether it is a request?"""
        return (
            found.kind is Kind.UNRELATED
            and self.may_be_request(head)
            and self.search(head.subject) is None
        )

    def take_as(
        self,
        head: IncomingMail,
        found: Classification,
        start: bytes | None,
        *,
        before_start: bool,
    ) -> Taken | None:
        """What intake takes a message for, or None if it is left alone.

        Mail from before sarbot's start is never answered: a request, in the agreed words
        or in others, is listed (``history``), anything else left alone.  Later mail is
        what the classifier found, or else a ``possible`` request if its words say so.
        ``start`` is the start of the message, read if ``needs_text`` said so.
        """
        if found.kind in (Kind.GUARDED, Kind.REPLY) or (
            found.kind is Kind.REQUEST and not before_start
        ):
            return None if before_start else Taken(found.kind.value, found)
        if found.kind is Kind.REQUEST:
            words: str | None = f"the subject phrase {self.subject_phrase}"
        elif not self.may_be_request(head):
            return None
        else:
            text = parse_message(start).text if start else ""
            words = self.match(head.subject, text)
        if words is None:
            return None
        return Taken("history" if before_start else "possible", found, words, before_start)

    def may_be_request(self, head: IncomingMail) -> bool:
        """Worth a look: not switched off, not mail that is never answered, and from an
        address a request could be registered for (a possible request is nobody's without it)."""
        return self.enabled and head.sender is not None and refusal(head, self.own_address) is None

    def match(self, subject: str, text: str = "") -> str | None:
        """The phrase that makes this look like an access request, or None."""
        for part in (subject, text[:TEXT_CHARS]):
            found = self.search(part)
            if found is not None:
                return found
        return None

    def search(self, text: str) -> str | None:
        normalised = normalise(text) + " "
        if normalised == " ":
            return None
        for phrase in self.phrases:
            if phrase.pattern.search(normalised):
                return phrase.text
        return None
