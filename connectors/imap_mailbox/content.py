"""The text and attachments of a message: plain parts, or its HTML as text."""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.message import EmailMessage, Message
from html.parser import HTMLParser

from connectors.imap_mailbox.headers import (
    SPACES_RE,
    flat,
)
from sarbot.connector import (
    JSONValue,
)

MAX_MIME_DEPTH = 30


_BLANK_LINES_RE = re.compile(r"\n\s*\n\s*")


def contents(message: EmailMessage) -> tuple[str, list[JSONValue]]:
    """The text of a message (its plain parts, else its HTML as text) and its attachments."""
    plain: list[str] = []
    html: list[str] = []
    attachments: list[JSONValue] = []
    for part in _leaves(message, 0):
        content_type = part.get_content_type()
        filename = part.get_filename()
        inline_text = content_type in ("text/plain", "text/html") and not filename
        if inline_text and part.get_content_disposition() != "attachment":
            (plain if content_type == "text/plain" else html).append(_decoded(part))
            continue
        name = flat(filename) if filename else f"(unnamed {content_type})"
        attachments.append({"name": name, "size_bytes": _size(part)})
    texts = [t.strip() for t in plain] if plain else [_html_text(h) for h in html]
    return "\n\n".join(t for t in texts if t), attachments


def _leaves(part: Message, depth: int) -> Iterator[Message]:
    """The parts that hold content; an attached message counts as one attachment."""
    if depth > MAX_MIME_DEPTH:
        raise ValueError("MIME structure nested too deeply")
    if part.get_content_maintype() == "multipart" and part.is_multipart():
        for child in part.get_payload():
            if isinstance(child, Message):
                yield from _leaves(child, depth + 1)
    else:
        yield part


def _decoded(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except (LookupError, ValueError):  # unknown or non-text charset names
        return payload.decode("utf-8", errors="replace")


def _size(part: Message) -> int | None:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return len(payload)
    try:
        return len(part.as_bytes())
    except Exception:  # an attached message that cannot be serialised again
        return None


class _HtmlText(HTMLParser):
    """The visible text of an HTML document, one line per block."""

    BLOCKS = frozenset(
        {"address", "article", "blockquote", "br", "dd", "div", "dl", "dt", "footer", "h1"}
        | {"h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "ol", "p", "pre", "section"}
        | {"table", "td", "th", "tr", "ul"}
    )
    HIDDEN = frozenset({"head", "script", "style", "template", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag(tag, 1)

    def handle_endtag(self, tag: str) -> None:
        self._tag(tag, -1)

    def _tag(self, tag: str, step: int) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden + step)
        elif tag in self.BLOCKS:
            self.chunks.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.chunks.append(data)


def _html_text(document: str) -> str:
    parser = _HtmlText()
    parser.feed(document)
    parser.close()
    lines = (SPACES_RE.sub(" ", line).strip() for line in "".join(parser.chunks).split("\n"))
    return _BLANK_LINES_RE.sub("\n\n", "\n".join(lines)).strip()
