"""What the ``access_log`` connector looks for in a line: the person's logins (compared
whole, in their namespace) and addresses (found whole within a value)."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote_plus

from connectors.logscan import Prefilter
from sarbot.connector import EMAIL, Identifier, Identity, fold, split_account, written_forms

# Characters that may stand next to an address inside a longer one (a local part's).
_ADDRESS_NEIGHBOUR = r"[\w.!#$%&'*+/=?^`{|}~-]"
_ANY_ADDRESS = re.compile(r"[\w.!#$%&'*+^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")


class Matcher:
    """The person's logins (compared whole, in their namespace) and addresses (found whole
    within a value).

    Values are compared in lower case, so that ``may_concern`` (a substring search
    for any of them) is true of every line that a parsed comparison could match.
    """

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.addresses = [
            (i, form, _address_pattern(form.lower()))
            for i in identity.of_kind(EMAIL)
            for form in written_forms(i.value)
        ]
        names = [fold(split_account(i.value)[0]) for i in identity.of_kind("username")]
        self.needles = {v.lower() for v in names + [form for _, form, _ in self.addresses] if v}
        self._prefilters: dict[str, Prefilter] = {}

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
        """The identifier the line's user is: a login valid in this log, or an address in it."""
        if not user:
            return None
        if found := self.identity.account(user, namespace):
            return found
        lowered = user.lower()
        return next((i for i, _, pattern in self.addresses if pattern.search(lowered)), None)

    def query(self, pairs: tuple[tuple[str, str], ...]) -> tuple[Identifier | None, str]:
        """The address found in the query, and only the parameters that hold it."""
        for identifier, form, pattern in self.addresses:
            shown = [
                _shown(name, value, form)
                for name, value in pairs
                if pattern.search((value or name).lower())
            ]
            if shown:
                return identifier, "&".join(shown)
        return None, ""

    def without_other_addresses(self, text: str) -> str:
        """The text with every address that is not one of the person's replaced."""
        return _ANY_ADDRESS.sub(
            lambda m: m[0] if m[0].lower() in self.needles else "(address withheld)", text
        )

    def _holds_needle(self, text: str) -> bool:
        if not text.isascii():  # as fold() compares: composed (NFC), then lower case
            text = unicodedata.normalize("NFC", text)
        lowered = text.lower()
        return any(needle in lowered for needle in self.needles)


def _address_pattern(address: str) -> re.Pattern[str]:
    """The address, but not as part of a longer one (``xalice@`` or ``.test.org``)."""
    return re.compile(rf"(?<!{_ADDRESS_NEIGHBOUR}){re.escape(address)}(?![\w-]|\.[\w-])")


def _shown(name: str, value: str, address: str) -> str:
    text = value or name
    if text.lower() != address.lower():
        text = f"(a value containing {address})"
    return f"{name}={text}" if value else text
