"""Headless Chromium for the tests: open a page from file:// and keep what a person would get.

One launch gives the rendered DOM, a screenshot and Chromium's NetLog, which
records every network request the browser made, whether or not it succeeded.
A browser that is missing or fails raises BrowserError, for the caller to fail on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# As root and without a display or D-Bus: no sandbox, no GPU, and as few of the
# browser's own background services as its switches allow.  No host name resolves
# (the NetLog still records a request before its name is looked up), so nothing
# the page or the browser asks for leaves this machine.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--net-log-capture-mode=Everything",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)
# NetLog parameters that say on whose behalf a request was made.
CONTEXT_KEYS = ("network_isolation_key", "network_anonymization_key", "site_for_cookies")
TARGET_KEYS = ("url", "host", "destination", "original_url")


class BrowserError(RuntimeError):
    """Chromium is missing, failed, or left no usable output."""


@dataclass(frozen=True)
class Rendering:
    dom: str
    screenshot: Path
    netlog: Path
    seconds: float


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        raise BrowserError("chromium is not installed (scripts/bootstrap installs it)")
    return found


def render(
    page: Path,
    out_dir: Path,
    *,
    width: int = 1200,
    height: int = 2000,
    timeout: float = 30,
) -> Rendering:
    """Open ``page`` from file:// once: its DOM after loading, a screenshot and the NetLog."""
    screenshot, netlog = out_dir / f"{page.stem}.png", out_dir / f"{page.stem}.netlog.json"
    profile = Path(tempfile.mkdtemp(prefix="sarbot-chromium-"))
    argv = [
        chromium(),
        *FLAGS,
        f"--user-data-dir={profile}",
        f"--log-net-log={netlog}",
        f"--window-size={width},{height}",
        f"--screenshot={screenshot}",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    started = time.monotonic()
    # A session of its own, so that on a timeout the browser and its helpers end together.
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        # A script that opens a dialog, alert() say, stops headless Chromium until it is closed.
        raise BrowserError(
            f"chromium did not finish in {timeout:g} s (did the page open a dialog?):\n"
            + err[-4000:]
        ) from None
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    seconds = time.monotonic() - started
    if process.returncode != 0 or "<html" not in out:
        raise BrowserError(f"chromium exited with {process.returncode}:\n{err[-4000:]}")
    for produced in (screenshot, netlog):
        if not produced.is_file():
            raise BrowserError(f"chromium wrote no {produced.name}:\n{err[-4000:]}")
    return Rendering(out, screenshot, netlog, seconds)


# -- the NetLog ----------------------------------------------------------------------------


def _events(netlog: Path) -> Iterator[Mapping[str, Any]]:
    try:
        document = json.loads(netlog.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BrowserError(f"{netlog.name} is not complete JSON: {exc}") from None
    yield from document["events"]


def _host(target: str) -> str:
    return (urlsplit(target).hostname or target).lower()


@dataclass
class NetworkActivity:
    """What the NetLog says went to the network: URLs and hosts, the browser's own included."""

    targets: set[str] = field(default_factory=set)
    page_targets: set[str] = field(default_factory=set)
    """Those reached on behalf of a page opened from file://."""

    @property
    def hosts(self) -> set[str]:
        return {_host(target) for target in self.targets}


def network_activity(netlog: Path) -> NetworkActivity:
    """Read a NetLog: every network target, and those a file:// page caused.

    An event for a page's request carries the page's site in its isolation keys
    and, for fetches, the page's origin as its initiator (``null`` for file://).
    The browser's own background requests carry neither.  The file:// page
    itself never reaches the network stack, so it is not in the NetLog at all.
    """
    activity = NetworkActivity()
    for event in _events(netlog):
        params = event.get("params")
        if not isinstance(params, dict):
            continue
        found = {
            value
            for key in TARGET_KEYS
            if isinstance(value := params.get(key), str)
            and "://" in value
            and not value.startswith("file:")
        }
        activity.targets |= found
        contexts = [str(params.get(key, "")) for key in CONTEXT_KEYS]
        initiator = params.get("initiator")
        if any("file://" in c for c in contexts) or initiator not in (None, "not an origin"):
            activity.page_targets |= found
    return activity


# -- the DOM -------------------------------------------------------------------------------


class Dom(HTMLParser):
    """The elements and visible text of a serialised DOM: tags, headings and table rows.

    A row is the text of its cells; a cell holding a table has that table's text too.
    """

    HEADINGS = frozenset({"h1", "h2", "h3"})
    HIDDEN = frozenset({"head", "title", "style", "script"})

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: Counter[str] = Counter()
        self.headings: list[str] = []
        self.rows: list[list[str]] = []
        self._texts: list[str] = []
        self._open: list[str] = []
        self._rows: list[list[str]] = []
        self._cells: list[list[str]] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self._open.append(tag)
        if tag == "tr":
            self._rows.append([])
            self.rows.append(self._rows[-1])
        elif tag in ("th", "td") or tag in self.HEADINGS:
            self._cells.append([])

    def handle_endtag(self, tag: str) -> None:
        if tag not in self._open:
            return
        del self._open[len(self._open) - 1 - self._open[::-1].index(tag) :]
        if tag == "tr" and self._rows:
            self._rows.pop()
        elif tag in ("th", "td") and self._cells and self._rows:
            self._rows[-1].append(_words(self._cells.pop()))
        elif tag in self.HEADINGS and self._cells:
            self.headings.append(_words(self._cells.pop()))

    def handle_data(self, data: str) -> None:
        if self.HIDDEN.isdisjoint(self._open):
            self._texts.append(data)
            for cell in self._cells:
                cell.append(data)

    @property
    def text(self) -> str:
        """The visible text, its whitespace collapsed."""
        return _words(self._texts)


def _words(pieces: list[str]) -> str:
    return " ".join(" ".join(pieces).split())


# -- the screenshot ------------------------------------------------------------------------


@dataclass(frozen=True)
class Png:
    width: int
    height: int
    detailed_rows: int
    """Pixel rows with horizontal detail (text, borders), as opposed to a flat colour."""
    size: int


def read_png(path: Path) -> Png:
    """Check a PNG's structure and count its rows that are not one flat colour.

    The rows are counted on the filtered scanlines: a flat row, whatever the
    filter, is a few distinct byte values, while a row through text has many.
    """
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise BrowserError(f"{path.name} is not a PNG")
    chunks: dict[bytes, list[bytes]] = defaultdict(list)
    offset = 8
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        if zlib.crc32(kind + body) != int.from_bytes(data[offset + 8 + length :][:4], "big"):
            raise BrowserError(f"{path.name}: bad CRC in a {kind!r} chunk")
        chunks[kind].append(body)
        offset += 12 + length
    ihdr = chunks[b"IHDR"][0]
    width, height = int.from_bytes(ihdr[0:4], "big"), int.from_bytes(ihdr[4:8], "big")
    depth, colour, interlace = ihdr[8], ihdr[9], ihdr[12]
    channels = {2: 3, 6: 4}.get(colour)
    if depth != 8 or channels is None or interlace != 0 or b"IEND" not in chunks:
        raise BrowserError(f"{path.name}: unexpected PNG layout {depth=} {colour=} {interlace=}")
    pixels = zlib.decompress(b"".join(chunks[b"IDAT"]))
    stride = 1 + width * channels
    if len(pixels) != stride * height:
        raise BrowserError(f"{path.name}: image data is {len(pixels)} bytes, not {stride * height}")
    detailed = sum(
        len(set(pixels[row * stride + 1 : (row + 1) * stride])) > 2 * channels + 2
        for row in range(height)
    )
    return Png(width, height, detailed, len(data))
