"""What the ``access_log`` connector looks for in a line: the person's logins (compared
whole, in their namespace) and addresses (a user field that is one; found whole within a
query value), and which addresses of a matched line are other people's.

Every address is decided on normalised text: a candidate's boundaries are found on the
text in NFC, where a character ends an address only if no normalised address could hold
it there, and the candidate is then normalised (``Identity.address``, through
``sarbot.addresses``) and compared exactly.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections.abc import Iterator
from functools import lru_cache
from urllib.parse import unquote, unquote_plus

import idna
from idna.idnadata import codepoint_classes
from idna.intranges import intranges_contain

from connectors.logscan import Prefilter
from sarbot.connector import EMAIL, Identifier, Identity, fold, split_account, written_forms

# The ASCII characters a local part may hold (atext and dots): next to an address, they
# make it part of a longer one.
_LOCAL_ASCII = frozenset(string.ascii_letters + string.digits + "_.!#$%&'*+/=?^`{|}~-")
_LABEL_ASCII = frozenset(string.ascii_letters + string.digits + "_.-")
# ``Name <address>``: the spaces before ``<`` belong to one alternative only, so that a
# long field that is no such form is refused in linear time.
_NAME_ADDR = re.compile(r'(?:[^<>@"\\]*|"[^<>@"\\]*"\s*)<([^<>\s]+)>')
LOCAL_MAX = 64
"""The longest local part an address may have (RFC 5321): no longer piece is looked up."""
ADDRESS_MAX = 320
"""Longer than any address (64 + 1 + 253, and a few final dots): not looked up, not kept."""
KEPT_MAX = 65536
"""Addresses looked up in one lookup, kept at most (then forgotten and kept afresh)."""
_UNQUOTE_ROUNDS = 4
WITHHELD = "(address withheld)"
STRUCTURE_WITHHELD = "(withheld)"


class Matcher:
    """The person's logins (compared whole, in their namespace) and addresses (a user
    field that is one, or found whole within a query value).

    ``needles`` are the values in lower case, so that ``may_concern`` (a substring search
    for any of them) is true of every line a parsed comparison could match in the forms
    the byte search looks for.
    """

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        forms = [form for i in identity.of_kind(EMAIL) for form in written_forms(i.value)]
        names = [fold(split_account(i.value)[0]) for i in identity.of_kind("username")]
        self.needles = {v.lower() for v in names + forms if v}
        self._prefilters: dict[str, Prefilter] = {}
        self._addresses: dict[tuple[str, bool], Identifier | None] = {}

    def may_concern(self, line: str, log_format: str) -> bool:
        """False only for a line that cannot match: it holds none of the values sought."""
        if log_format == "jsonl" and "\\" in line:
            return True  # a JSON escape may spell a value differently
        if self._holds_needle(line):
            return True
        return log_format == "combined" and "%" in line and self._holds_needle(unquote_plus(line))

    def prefilter(self, log_format: str) -> Prefilter:
        """The byte search that passes over the lines ``may_concern`` is false of (built
        once per format for the lookup, not once per file)."""
        if log_format not in self._prefilters:
            self._prefilters[log_format] = Prefilter(self.needles, log_format, self._holds_needle)
        return self._prefilters[log_format]

    def user(self, user: str | None, namespace: str) -> Identifier | None:
        """The identifier the line's user *is*: a login valid in this log, or one of the
        person's addresses, alone or as ``Name <address>`` (a field that merely holds the
        address, ``carol@other.test on behalf of alice@example.test``, is not hers)."""
        if not user:
            return None
        if found := self.identity.account(user, namespace):
            return found
        named = _NAME_ADDR.fullmatch(user.strip())
        return self._address(named[1] if named else user)

    def query(self, pairs: tuple[tuple[str, str], ...]) -> tuple[Identifier | None, str]:
        """The address found in the query, and only the parameters that hold it."""
        found: Identifier | None = None
        shown: list[str] = []
        for name, value in pairs:
            text = value or name
            hits = [(i, c) for c in _candidates(text) if (i := self._address(c)) is not None]
            mine = [c for i, c in hits if found is None or i == found]
            if not mine:
                continue
            found = found or hits[0][0]
            if self._address(text) is None:
                text = f"(a value containing {mine[0]})"
            shown.append(f"{name}={text}" if value else text)
        return found, "&".join(shown)

    def without_other_addresses(self, text: str, namespace: str = "") -> str:
        """The text with every address that is not one of the person's (nor a login of
        theirs in ``namespace``) replaced: read as written, then percent-decoded (an
        address either reading finds is withheld; the text is then shown decoded)."""
        if "@" not in text and "%" not in text:
            return text  # no address, however read: the usual field
        written = unicodedata.normalize("NFC", text)
        first = self._withhold(written, namespace)
        decoded = _decoded(first)
        second = self._withhold(decoded, namespace)
        result = first if second == decoded else second
        return text if result == written else result

    def _withhold(self, text: str, namespace: str) -> str:
        if "@" not in text:
            return text
        out, last = [], 0
        for start, end in _merged(_spans(text, loose=True)):
            out += [text[last:start], self._withheld(text[start:end], namespace)]
            last = end
        return "".join(out) + text[last:]

    def shown_status(self, status: str) -> str | None:
        """A status that is a JSON object or array, with only its numbers and truth values
        (its texts may name anyone); None for any other status."""
        if not status.startswith(("{", "[")):
            return None
        try:
            value = json.loads(status)
        except (ValueError, RecursionError):
            return None
        if isinstance(value, dict):
            kept = {str(k): _plain(v) for k, v in value.items()}
            return json.dumps(kept, sort_keys=True, ensure_ascii=False)
        if isinstance(value, list):
            return json.dumps([_plain(v) for v in value], ensure_ascii=False)
        return None

    def _address(self, text: str, *, known: bool = False) -> Identifier | None:
        """The person's address the text is.  Kept for the lookup: the same addresses recur
        on line after line, and normalising one (IDNA) costs more than the rest of a line."""
        if len(text) > ADDRESS_MAX:
            return None
        key = (text, known)
        if len(self._addresses) >= KEPT_MAX:
            self._addresses.clear()
        if key not in self._addresses:
            found = self.identity.address(_without_final_dot(text), known=known)
            self._addresses[key] = found
        return self._addresses[key]

    def _withheld(self, text: str, namespace: str) -> str:
        """One span around an ``@``: kept if it is one of the person's addresses or logins
        (after a URL path or parameter), else withheld."""
        core = _without_final_dot(text)
        tail = text[len(core) :]
        local = core.rpartition("@")[0]
        if core.count("@") == 1 and not core.startswith('"'):
            # Only where a local part could start: within its longest length of the @.
            near = max(len(local) - LOCAL_MAX, 0)
            cuts = [0] if len(local) <= LOCAL_MAX else []
            cuts += [n + 1 for n in range(near, len(local)) if local[n] in "/?&="]
            for cut in cuts:
                piece = core[cut:]
                if self._address(piece, known=True) or self.identity.account(
                    piece, namespace, known=True
                ):
                    return text
            if local.startswith("/"):  # a URL path: the address is its last segment
                return core[: local.rfind("/") + 1] + WITHHELD + tail
        return WITHHELD + tail

    def _holds_needle(self, text: str) -> bool:
        if not text.isascii():  # as fold() compares: composed (NFC), then lower case
            text = unicodedata.normalize("NFC", text)
        lowered = text.lower()
        return any(needle in lowered for needle in self.needles)


def _candidates(text: str) -> Iterator[str]:
    """Every run of text around an ``@`` that could be one address, on the NFC text; and
    the same without the punctuation not in ASCII around it (``“alice@example.test”``,
    ``—alice@…``, a zero-width space), which no address's local part may hold."""
    normal = unicodedata.normalize("NFC", text)
    for start, end in _spans(normal, loose=False):
        run = normal[start:end]
        yield run
        trimmed = _trimmed(run)
        if trimmed != run:
            yield trimmed


def _trimmed(run: str) -> str:
    start, end = 0, len(run)
    while start < end and _punctuation(run[start]):
        start += 1
    while end > start and _punctuation(run[end - 1]) and _mapped(run[end - 1]) != ".":
        end -= 1
    return run[start:end]


def _punctuation(char: str) -> bool:
    """Punctuation or a format character outside ASCII: never part of an address."""
    return not char.isascii() and unicodedata.category(char)[0] in "PC"


def _spans(text: str, *, loose: bool) -> Iterator[tuple[int, int]]:
    """The span of each ``@`` with every character on either side that an address could
    hold there. Strict (``loose`` false): a span touching another ``@`` is no address.
    Loose (for withholding): quoted local parts and ``[...]`` domains are taken in too."""
    for at in (n for n, c in enumerate(text) if c == "@"):
        start = at
        if loose and start > 0 and text[start - 1] == '"':
            start = max(text.rfind('"', 0, start - 1), 0)
        while start > 0 and _in_local(text[start - 1]):
            start -= 1
        end = at + 1
        if loose and text[end : end + 1] == "[" and (close := text.find("]", end)) > 0:
            end = close + 1
        while end < len(text) and _in_domain(text[end]):
            end += 1
        if start == at or end == at + 1:
            continue
        if not loose and "@" in (text[start - 1 : start], text[end : end + 1]):
            continue
        yield start, end


def _merged(spans: Iterator[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    current: tuple[int, int] | None = None
    for start, end in spans:
        if current is not None and start <= current[1]:
            current = (current[0], max(end, current[1]))
            continue
        if current is not None:
            yield current
        current = (start, end)
    if current is not None:
        yield current


def _in_local(char: str) -> bool:
    """A character a local part may hold: ASCII atext and dots, and anything not ASCII
    but white space or control characters (an internationalised mailbox's)."""
    if char.isascii():
        return char in _LOCAL_ASCII
    return not char.isspace() and unicodedata.category(char) != "Cc"


@lru_cache(maxsize=4096)
def _in_domain(char: str) -> bool:
    """A character a domain may hold once mapped as UTS #46 maps it (``。`` is a dot, a
    soft hyphen is nothing, ``℡`` is ``tel``): a character no valid domain can hold ends it."""
    if char.isascii():
        return char in _LABEL_ASCII
    if char.isspace() or unicodedata.category(char) == "Cc":
        return False
    mapped = _mapped(char)
    return mapped is not None and all(
        c in _LABEL_ASCII
        or any(intranges_contain(ord(c), codepoint_classes[k]) for k in codepoint_classes)
        for c in mapped
    )


@lru_cache(maxsize=4096)
def _mapped(char: str) -> str | None:
    try:
        return idna.uts46_remap(char, std3_rules=False, transitional=False)
    except (idna.IDNAError, UnicodeError):
        return None


def _without_final_dot(text: str) -> str:
    """The text without the full stops (ASCII, ideographic, full-width) ending it."""
    end = len(text)
    while end > 0 and _mapped(text[end - 1]) == ".":
        end -= 1
    return text[:end]


def _decoded(text: str) -> str:
    """Percent-decoded until nothing changes (``%2540`` too), in NFC."""
    for _ in range(_UNQUOTE_ROUNDS):
        if "%" not in text or (plain := unquote(text, errors="replace")) == text:
            break
        text = plain
    return unicodedata.normalize("NFC", text)


def _plain(value: object) -> object:
    return value if isinstance(value, int | float | bool) or value is None else STRUCTURE_WITHHELD
