"""The ``access_log`` connector on awkward input: JSON lines holding half a surrogate pair
(which the index cannot store as text), and rotated logs compressed otherwise than with gzip
(read, or refused; never read as plain bytes to pass for a complete answer)."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.access_log import AccessLogConnector, AccessLogSettings
from connectors.logformats import compression
from connectors.logindex import tokens_of
from sarbot.config import validate
from sarbot.connector import Identity, Record
from sarbot.errors import ConnectorError
from sarbot.testing.identity import address, asked, login
from tests.test_access_log_prefilter import IDENTITIES, NOISE, VALUES, log_line

ALICE = asked(address("alice@example.test"), login("asmith", "access_log:logs/SSH"))
AUTH_LINE = (
    b"Mar  1 09:00:01 gw1 sshd[1]: Accepted publickey for asmith from 192.0.2.10 port 1 ssh2\n"
)
# `zstd -c` of AUTH_LINE: the standard library has no zstd, and none is installed for it.
ZSTD_LINE = bytes.fromhex(
    "28b52ffd04588502007205131880b53a91b191b050a40996ca7fb8e990eaa391e21676a2278271dddf4f8e"
    "f2bac5142de6ec61e476371fec748eed0396a8073802f28b4dc9941a8e8c2d96ebfe0a90af225574f4fb73"
    "2202004f094185"
)
COMPRESSED = {
    "xz": ("auth.log.3.xz", lzma.compress(AUTH_LINE)),
    "bzip2": ("auth.log.4.bz2", bz2.compress(AUTH_LINE)),
    "zstd": ("auth.log.5.zst", ZSTD_LINE),
}
SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)


def connector(folder: Path, source: dict[str, Any], **extra: Any) -> AccessLogConnector:
    checked = validate(
        {"sources": [source], **extra}, AccessLogSettings, source="t", base_dir=folder
    )
    assert isinstance(checked, AccessLogSettings)
    return AccessLogConnector("logs", checked)


def collect(folder: Path, source: dict[str, Any], who: Identity, **extra: Any) -> list[Record]:
    found = connector(folder, source, **extra)
    try:
        return list(found.collect(who))
    finally:
        found.close()


def jsonl(folder: Path, lines: list[str], index: bool) -> dict[str, Any]:
    (folder / "app.jsonl").write_text("".join(line + "\n" for line in lines))
    source = {"paths": ["app.jsonl"], "format": "jsonl", "label": "App"}
    return {**source, "index_dir": "index"} if index else source


# --- half a surrogate pair in a JSON line ----------------------------------------------


def test_a_lone_surrogate_in_a_json_line_leaves_the_index_working(tmp_path: Path) -> None:
    """json.dumps writes half a surrogate pair as an escape; decoded, no database text holds
    it.  The index is kept all the same, every collection, and finds what a scan finds
    (whatever the line test makes of the person's address next to such a half)."""
    alice = Identity.verified("alice@example.test")
    lines = [
        json.dumps(
            {"time": "2026-03-01T10:00:00Z", "user": "alice@example.test", "ip": "192.0.2.1"}
        ),
        json.dumps({"time": "2026-03-01T10:00:01Z", "user": "x\ud800", "ip": "203.0.113.5"}),
        json.dumps({"time": "2026-03-01T10:00:02Z", "user": "alice@example.test\udc00"}),
        json.dumps({"time": "2026-03-01T10:00:03Z", "user": "bob", "k\udfff": "\ud83d"}),
        json.dumps({"time": "2026-03-01T10:00:04Z", "user": "alice@example.test", "n": "\udbff"}),
    ]
    scanned = collect(tmp_path, jsonl(tmp_path, lines, index=False), alice)
    numbers = [r.location.rsplit(" ", 1)[1] for r in scanned]
    assert numbers[0] == "1" and numbers[-1] == "5"
    for _ in range(2):  # the index, once kept, is used as kept
        assert collect(tmp_path, jsonl(tmp_path, lines, index=True), alice) == scanned
    for line in lines:
        for token in tokens_of(line, "jsonl"):
            token.encode()  # every token can be stored as text


def test_a_value_sought_with_a_lone_surrogate_is_searched_by_scanning(tmp_path: Path) -> None:
    """A login holding half a surrogate pair cannot be looked up in the index (no token holds
    one): the indexed source is scanned for it, and finds what a scan finds."""
    who = asked(login("x\ud800", "access_log:logs/App"))
    lines = [json.dumps({"user": "x\ud800"}), json.dumps({"user": "asmith"})]
    scanned = collect(tmp_path, jsonl(tmp_path, lines, index=False), who)
    assert [r.location.rsplit(" ", 1)[1] for r in scanned] == ["1"]
    assert collect(tmp_path, jsonl(tmp_path, lines, index=True), who) == scanned


@st.composite
def surrogate_line(draw: st.DrawFn, n: int = 0) -> str:
    """A JSON line as json.dumps writes it, with half a surrogate pair (or more) in a value
    or a key, next to values sought, noise or nothing."""
    parts = draw(
        st.lists(st.one_of(st.sampled_from(VALUES), st.sampled_from(NOISE), SURROGATES), max_size=3)
    )
    parts.insert(draw(st.integers(0, len(parts))), draw(SURROGATES))
    text = "".join(parts)
    entry: dict[str, Any] = {"time": f"2026-03-01T10:00:0{n}Z", "ip": f"192.0.2.{n}"}
    where = draw(st.sampled_from(["user", "user", "action", "key"]))
    entry.update({text: "x"} if where == "key" else {where: text})
    return json.dumps(entry)


def json_line(n: int, value: bytes) -> str:
    text = value.decode("utf-8", "replace").replace('"', "")
    return f'{{"time": "2026-03-01T10:00:0{n}Z", "user": "{text}", "ip": "192.0.2.{n}"}}'


LINES = st.lists(
    st.one_of(
        surrogate_line(),
        st.builds(json_line, st.integers(0, 9), log_line()),
    ),
    max_size=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=surrogate_line(),
    rounds=st.lists(LINES, min_size=1, max_size=3),
    who=st.lists(st.sampled_from(sorted(IDENTITIES)), min_size=1, max_size=3),
)
def test_an_indexed_lookup_finds_what_a_scan_finds_with_lone_surrogates(
    tmp_path_factory: pytest.TempPathFactory, first: str, rounds: list[list[str]], who: list[str]
) -> None:
    """The property of tests/test_access_log_index.py, on JSON lines holding halves of
    surrogate pairs among the random lines it draws, as the log grows."""
    folder = tmp_path_factory.mktemp("logs")
    live = folder / "jsonl.log"
    live.write_text(first + "\n")
    source = {"paths": ["jsonl.log"], "format": "jsonl", "label": "jsonl"}
    scanned = connector(folder, source, max_records=5)
    indexed = connector(folder, {**source, "index_dir": "index"}, max_records=5)
    for number, lines in enumerate(rounds):
        with live.open("a") as out:
            out.write("".join(line + "\n" for line in lines))
        identity = IDENTITIES[who[number % len(who)]]
        assert list(indexed.collect(identity)) == list(scanned.collect(identity))


# --- logs compressed otherwise than with gzip -----------------------------------------


def auth_logs(folder: Path, how: str, name: str, data: bytes) -> dict[str, Any]:
    """auth.log, a gzip rotation and one more rotation ``name`` holding ``data``."""
    (folder / "auth.log").write_bytes(AUTH_LINE)
    (folder / "auth.log.2.gz").write_bytes(gzip.compress(AUTH_LINE))
    (folder / name).write_bytes(data)
    source: dict[str, Any] = {"paths": ["auth.log", "auth.log.*"], "format": "auth"}
    source.update(label="SSH", year=2026)
    return {**source, "index_dir": "index"} if how == "index" else source


HOW = pytest.mark.parametrize("how", ["grep", "python", "index"])


@pytest.mark.parametrize("kind", ["xz", "bzip2"])
@HOW
def test_logs_compressed_with_xz_or_bzip2_are_read(tmp_path: Path, kind: str, how: str) -> None:
    """auth.log.3.xz and auth.log.4.bz2 match auth.log.* and are read as gzip rotations are,
    by every path: grep hands compressed files to the scan, which inflates them."""
    name, data = COMPRESSED[kind]
    source = auth_logs(tmp_path, how, name, data)
    found = collect(tmp_path, source, ALICE, use_grep=how == "grep")
    assert [r.location.rsplit("/", 1)[1] for r in found] == [
        "auth.log line 1",
        "auth.log.2.gz line 1",
        f"{name} line 1",
    ]
    assert collect(tmp_path, source, asked(login("bjones", "access_log:logs/SSH"))) == []


@pytest.mark.parametrize("kind", ["xz", "bzip2"])
@HOW
def test_a_damaged_xz_or_bzip2_log_fails_the_collection_naming_it(
    tmp_path: Path, kind: str, how: str
) -> None:
    name, data = COMPRESSED[kind]
    source = auth_logs(tmp_path, how, name, data[: len(data) - 8])
    with pytest.raises(ConnectorError, match=str(tmp_path / name)):
        collect(tmp_path, source, ALICE, use_grep=how == "grep")


@HOW
def test_a_zstd_log_fails_the_collection_naming_it(tmp_path: Path, how: str) -> None:
    """zstd is not read (the standard library has no module for it): read as plain bytes it
    would match nothing and the answer would look complete, so the collection fails and
    says why; without the file the others are read as before."""
    name, data = COMPRESSED["zstd"]
    source = auth_logs(tmp_path, how, name, data)
    with pytest.raises(ConnectorError) as caught:
        collect(tmp_path, source, ALICE, use_grep=how == "grep")
    assert str(caught.value).startswith(f"{tmp_path / name}: compressed with zstd, ")
    assert "not read" in str(caught.value)
    (tmp_path / name).unlink()
    found = collect(tmp_path, source, ALICE, use_grep=how == "grep")
    assert [r.location.rsplit("/", 1)[1] for r in found] == [
        "auth.log line 1",
        "auth.log.2.gz line 1",
    ]


def test_compressions_are_told_by_their_first_bytes_only() -> None:
    assert compression(gzip.compress(AUTH_LINE)) == "gzip"
    assert [compression(data) for _, data in COMPRESSED.values()] == ["xz", "bzip2", "zstd"]
    assert compression(bz2.compress(b"")) == "bzip2"  # an empty bzip2 file ends at once
    for plain in (AUTH_LINE, b"BZh9 is not a bzip2 header\n", b"", b'{"user": "xz"}\n'):
        assert compression(plain) is None


# --- text a client chose --------------------------------------------------------------


@HOW
def test_a_session_line_a_client_wrote_is_no_session(tmp_path: Path, how: str) -> None:
    """sshd logs the disconnect message an unauthenticated client sends: one that reads like
    pam_unix's session line is not asmith's session.  pam_unix's own line for her is."""
    lines = [
        "Mar  1 03:14:15 gw1 sshd[4242]: Received disconnect from 203.0.113.66 port 50123:11: "
        "pam_unix(sshd:session): session opened for user asmith(uid=1001) by (uid=0) [preauth]",
        "Mar  1 03:14:15 gw1 sshd[4242]: pam_unix(sshd:session): session opened for user "
        "bjones(uid=1002) by asmith extra",
        "Mar  1 09:00:02 gw1 sshd[1001]: pam_unix(sshd:session): session opened for user "
        "asmith(uid=1001) by (uid=0)",
    ]
    (tmp_path / "auth.log").write_text("".join(line + "\n" for line in lines))
    source: dict[str, Any] = {"paths": ["auth.log"], "format": "auth", "label": "SSH"}
    source.update(year=2026, **({"index_dir": "index"} if how == "index" else {}))
    found = collect(tmp_path, source, ALICE, use_grep=how == "grep")
    assert [r.location.rsplit(" ", 1)[1] for r in found] == ["3"]
    assert "203.0.113.66" not in repr(found)


# --- a label that reads like a path ---------------------------------------------------


def test_a_label_with_a_slash_is_not_inside_another_source(tmp_path: Path) -> None:
    """Sources ``Portal`` and ``Portal/Other Ltd`` each log an asmith: a realm naming
    ``Portal`` does not reach the other, and one naming it (``%2F``) reaches it only."""
    (tmp_path / "acme.log").write_text(
        '192.0.2.1 - asmith [01/Mar/2026:10:00:00 +0000] "GET /a HTTP/1.1" 200 1 "-" "-"\n'
    )
    (tmp_path / "other.log").write_text(
        '198.51.100.9 - asmith [01/Mar/2026:11:00:00 +0000] "GET /b HTTP/1.1" 200 1 "-" "-"\n'
    )
    sources = [
        {"paths": ["acme.log"], "format": "combined", "label": "Portal"},
        {"paths": ["other.log"], "format": "combined", "label": "Portal/Other Ltd"},
    ]
    checked = validate({"sources": sources}, AccessLogSettings, source="t", base_dir=tmp_path)
    assert isinstance(checked, AccessLogSettings)
    logs = AccessLogConnector("logs", checked)
    try:
        acme = list(
            logs.collect(asked(login("asmith", "keepass:vault/Acme", "access_log:logs/Portal")))
        )
        other = list(logs.collect(asked(login("asmith", "access_log:logs/Portal%2FOther Ltd"))))
    finally:
        logs.close()
    assert [r.fields["Source IP"] for r in acme] == ["192.0.2.1"]
    assert [r.fields["Source IP"] for r in other] == ["198.51.100.9"]
