"""Which incoming messages are sarbot's business, and what kind they are.

The order of the checks is the decision:

1. a message the loop guards refuse is never answered (``GUARDED``);
2. a reply to one of sarbot's own messages, matched by In-Reply-To/References
   or by a reference number in the subject, goes to its request (``REPLY``);
3. a message whose decoded subject contains the request phrase is a new
   request (``REQUEST``);
4. everything else is left alone (``UNRELATED``): not read, moved or flagged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from structlog.typing import FilteringBoundLogger

from sarbot.mail.guards import refusal
from sarbot.mail.message import IncomingMail, parse_headers

_PREFIX_RE = re.compile(
    r"^\s*(?:(?:re|fwd?|aw|sv|wg|tr|vs|antw)\s*(?:\[\d+\])?\s*:\s*)+", re.IGNORECASE
)


class Kind(StrEnum):
    UNRELATED = "unrelated"
    GUARDED = "guarded"
    REPLY = "reply"
    REQUEST = "request"


@dataclass(frozen=True)
class Classification:
    kind: Kind
    reason: str = ""
    references: tuple[str, ...] = ()


def strip_prefixes(subject: str) -> str:
    """Remove reply and forward prefixes (Re:, Fwd:, AW:, SV: ...) from a subject."""
    return _PREFIX_RE.sub("", subject).strip()


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


class Classifier:
    """Classifies messages for one controller address and reference prefix."""

    def __init__(
        self, *, own_address: str, message_id_domain: str, phrase: str, prefix: str
    ) -> None:
        self.own_address = own_address
        self.domain = message_id_domain.lower()
        self.phrase = _norm(phrase)
        self.reference_re = re.compile(rf"\b({re.escape(prefix)}-\d{{4}}-\d{{4,9}})\b")

    def read(
        self, header: bytes, log: FilteringBoundLogger
    ) -> tuple[IncomingMail | None, Classification]:
        """Classify a message on its header block alone; hostile headers are refused, never
        raised."""
        try:
            head = parse_headers(header)
            return head, self.classify(head)
        except Exception as exc:  # the parser may fail in any way on hostile input
            log.warning("mail.unreadable", error_type=type(exc).__name__)
            return None, Classification(Kind.GUARDED, reason="unreadable")

    def is_candidate(self, mail: IncomingMail) -> bool:
        """Could this message be sarbot's business?  Decided on headers alone."""
        return self.classify(mail).kind is not Kind.UNRELATED

    def classify(self, mail: IncomingMail) -> Classification:
        references = self.references_in(mail)
        cites_us = any(mid.lower().endswith("@" + self.domain) for mid in mail.cited_ids)
        is_request = self.phrase in _norm(strip_prefixes(mail.subject))
        if not (cites_us or references or is_request):
            return Classification(Kind.UNRELATED)
        reason = refusal(mail, self.own_address)
        if reason is not None:
            return Classification(Kind.GUARDED, reason=reason)
        if cites_us or references:
            return Classification(Kind.REPLY, references=references)
        return Classification(Kind.REQUEST)

    def references_in(self, mail: IncomingMail) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.reference_re.findall(mail.subject)))
