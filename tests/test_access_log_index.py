"""The optional identifier index of the ``access_log`` connector finds exactly what a scan finds.

An indexed source answers a lookup from the lines its index points at (and what the files
gained since); every record and note must equal those of the same source scanned, on random
logs, as they grow, rotate (renamed, compressed), lose rotated files and are truncated.
"""

from __future__ import annotations

import gzip
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.access_log import AccessLogConnector, AccessLogSettings
from connectors.logindex import LogIndex, tokens_of
from connectors.logmatch import Matcher
from connectors.logscan import open_log
from sarbot.config import validate
from sarbot.connector import Identity, Record
from sarbot.errors import ConnectorError
from sarbot.testing.identity import address, asked, login
from tests.test_access_log_prefilter import FORMATS, IDENTITIES, TEMPLATES, log_line
from tests.test_connector_access_log import with_a_broken_block

STEP: st.SearchStrategy[tuple[str, list[tuple[int, bytes]]]] = st.one_of(
    st.tuples(st.just("append"), st.lists(st.tuples(st.integers(0, 9), log_line()), max_size=8)),
    st.tuples(st.just("rotate"), st.just([])),
    st.tuples(st.just("delete"), st.just([])),
    st.tuples(st.just("truncate"), st.lists(st.tuples(st.integers(0, 9), log_line()), max_size=4)),
)


def text(fmt: str, lines: list[tuple[int, bytes]], end: bool = True) -> bytes:
    """Lines in the shape of ``fmt``, the values in them random log text."""
    out = b"".join(
        TEMPLATES[fmt].format(n=n, v=value.decode("utf-8", "replace").replace('"', "")).encode()
        + b"\n"
        for n, value in lines
    )
    return out if end else out[:-1]


def connectors(folder: Path, index: bool, max_records: int = 5) -> AccessLogConnector:
    sources: list[dict[str, Any]] = []
    for fmt in FORMATS:
        source: dict[str, Any] = {"paths": [f"{fmt}.log", f"{fmt}.log.*"], "format": fmt}
        source["label"] = fmt
        if index:
            source["index_dir"] = "index"
        sources.append(source)
    raw = {"sources": sources, "max_records": max_records}
    checked = validate(raw, AccessLogSettings, source="t", base_dir=folder)
    assert isinstance(checked, AccessLogSettings)
    return AccessLogConnector("logs", checked)


def apply(folder: Path, fmt: str, step: str, lines: list[tuple[int, bytes]]) -> None:
    """One change to a log, as a program writing it or logrotate makes it."""
    live, first, second = (folder / f"{fmt}.log{s}" for s in ("", ".1", ".2.gz"))
    if step == "append":
        with live.open("ab") as out:
            out.write(text(fmt, lines, end=len(lines) % 3 != 1))  # at times, a line half written
    elif step == "rotate":
        if first.exists():
            second.write_bytes(gzip.compress(first.read_bytes()))
            first.unlink()
        if live.exists():
            live.rename(first)
        live.write_bytes(b"")
    elif step == "delete":
        (second if second.exists() else first).unlink(missing_ok=True)
    else:  # copytruncate, then new lines
        live.write_bytes(text(fmt, lines))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.lists(st.tuples(st.integers(0, 9), log_line()), max_size=15),
    steps=st.lists(st.tuples(st.sampled_from(FORMATS), STEP), max_size=6),
    who=st.lists(st.sampled_from(sorted(IDENTITIES)), min_size=1, max_size=3),
)
def test_an_indexed_lookup_finds_what_a_scan_finds(
    tmp_path_factory: pytest.TempPathFactory,
    start: list[tuple[int, bytes]],
    steps: list[tuple[str, tuple[str, list[tuple[int, bytes]]]]],
    who: list[str],
) -> None:
    folder = tmp_path_factory.mktemp("logs")
    for fmt in FORMATS:
        (folder / f"{fmt}.log").write_bytes(text(fmt, start))
    scanned, indexed = connectors(folder, index=False), connectors(folder, index=True)
    for round_ in range(len(steps) + 1):
        if round_:
            fmt, (step, lines) = steps[round_ - 1]
            apply(folder, fmt, step, lines)
        identity: Identity = IDENTITIES[who[round_ % len(who)]]
        assert list(indexed.collect(identity)) == list(scanned.collect(identity))


AUTH = "Mar  1 09:0{n}:00 gw1 sshd[1]: Accepted password for {user} from 192.0.2.{n} port 1 ssh2"
WEB = '192.0.2.{n} - {user} [01/Mar/2026:10:00:0{n} +0000] "GET /p?e={mail} HTTP/1.1" 200 1 "-" "x"'


def lookalike_logs(folder: Path) -> AccessLogConnector:
    """Two web logs (two namespaces) where ``asmith`` is two people, and addresses one
    inside the other."""
    for label in ("A", "B"):
        lines = [
            WEB.format(n=1, user="asmith", mail="-"),
            WEB.format(n=2, user="-", mail="alice%40example.test"),
            WEB.format(n=3, user="-", mail="malice%40example.test"),
            WEB.format(n=4, user="malice@example.test", mail="-"),
            WEB.format(n=5, user="alice@example.test", mail="-"),
            WEB.format(n=6, user="basmith", mail="-"),
            "garbage line naming malice@example.test and asmithy",
        ]
        (folder / f"{label}.log").write_text("".join(line + "\n" for line in lines))
    sources = [
        {"paths": [f"{label}.log"], "format": "combined", "label": label, "index_dir": "ix"}
        for label in ("A", "B")
    ]
    checked = validate({"sources": sources}, AccessLogSettings, source="t", base_dir=folder)
    assert isinstance(checked, AccessLogSettings)
    return AccessLogConnector("logs", checked)


def test_look_alike_people_each_see_their_own_lines_only(tmp_path: Path) -> None:
    connector = lookalike_logs(tmp_path)
    asmith_in_a = asked(login("asmith", "access_log:logs/A"))
    alice = asked(address("alice@example.test"))
    malice = asked(address("malice@example.test"))
    found = {
        name: [(r.location, r.notes) for r in connector.collect(identity)]
        for name, identity in (("asmith", asmith_in_a), ("alice", alice), ("malice", malice))
    }
    a, b = tmp_path / "A.log", tmp_path / "B.log"
    assert [where for where, _ in found["asmith"][:1]] == [f"{a} line 1"]
    assert len(found["asmith"]) == 1  # not B's asmith, not basmith, not asmithy
    assert [where for where, _ in found["alice"]] == [
        f"{p} line {n}" for p in (a, b) for n in (2, 5)
    ]
    assert [where for where, _ in found["malice"]] == [
        f"{p} line {n}" for p in (a, b) for n in (3, 4)
    ]
    # The garbage line names both addresses' text: a note for each, as a scan says.
    for name in found:
        assert any("1 line(s) of" in " ".join(notes) for _, notes in found[name])


def test_the_index_reads_only_the_lines_holding_a_value(tmp_path: Path) -> None:
    """The index is used: of a thousand lines, only those holding the value are read."""
    log = tmp_path / "auth.log"
    lines = [AUTH.format(n=n % 10, user=f"user{n}") for n in range(1000)]
    lines[500] = AUTH.format(n=1, user="asmith")
    log.write_text("".join(line + "\n" for line in lines) + "Mar  1 09:00:00 tail asmith")
    index = LogIndex(tmp_path / "ix", "auth", "auth")
    try:
        index.update([log])
        matcher = Matcher(asked(login("asmith", "access_log:logs/auth")))
        with open_log(log) as stream:
            found = index.lines(stream, log, matcher.needles, matcher.prefilter("auth"))
            assert found is not None
            read = list(found)
        assert read == [(501, lines[500]), (1001, "Mar  1 09:00:00 tail asmith")]
        # A value that tokens cannot answer for (it holds a space) is left to the scan.
        with open_log(log) as stream:
            assert index.lines(stream, log, {"a smith"}, matcher.prefilter("auth")) is None
    finally:
        index.close()


def test_the_index_is_private_follows_the_files_and_keeps_no_line(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        (tmp_path / "A.log").write_text("")
        connector = lookalike_logs(tmp_path)
        (tmp_path / "B.log").write_text(
            AUTH.format(n=1, user="Zebedee") + " CANARY Phrase Kept\n"
        )  # not a web log line: read as unparsable, tokens only
        alice = asked(address("alice@example.test"))
        list(connector.collect(alice))
    finally:
        os.umask(old)
    folder = tmp_path / "ix"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    made = list(folder.iterdir())
    assert made
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in made)
    (database,) = [p for p in made if p.suffix == ".sqlite" and p.name.startswith("logs_B")]
    stored = database.read_bytes()
    assert b"zebedee" in stored  # a token: the index holds personal data
    assert b"Zebedee" not in stored and b"canary phrase kept" not in stored  # never a line
    assert b"CANARY" not in stored
    # The log is deleted: after the next collection nothing of it is left in the index.
    (tmp_path / "B.log").unlink()
    connector = lookalike_logs_without_b(tmp_path)
    list(connector.collect(alice))
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT path FROM files").fetchall() == [(str(tmp_path / "B.log.1"),)]
        assert db.execute("SELECT count(*) FROM postings").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM tokens").fetchone() == (0,)
    db.close()
    assert b"zebedee" not in database.read_bytes()  # overwritten, not only unlinked


def lookalike_logs_without_b(folder: Path) -> AccessLogConnector:
    """Source B still configured, its pattern matching nothing but a file left empty."""
    (folder / "B.log.1").write_text("")
    sources = [
        {"paths": [f"{label}.log*"], "format": "combined", "label": label, "index_dir": "ix"}
        for label in ("A", "B")
    ]
    checked = validate({"sources": sources}, AccessLogSettings, source="t", base_dir=folder)
    assert isinstance(checked, AccessLogSettings)
    return AccessLogConnector("logs", checked)


@pytest.mark.parametrize(
    ("fmt", "line", "value"),
    [
        ("combined", 'GET /?e=ALICE%40Example.test"', "alice@example.test"),
        ("auth", "for J\u00dcRGEN from", "jürgen"),
        ("auth", "for JU\u0308RGEN from", "jürgen"),
        ("jsonl", '{"user": "\\u0061smith"}', "asmith"),
        ("jsonl", '{"user": {"name": "x\\\\asmith"}}', "asmith"),
    ],
)
def test_tokens_hold_values_however_written(fmt: str, line: str, value: str) -> None:
    assert any(value in token for token in tokens_of(line, fmt))


def test_a_rotated_compressed_log_keeps_its_entries(tmp_path: Path) -> None:
    """A log renamed, then compressed, is recognised: its entries move with it."""
    log = tmp_path / "auth.log"
    log.write_text("".join(AUTH.format(n=n, user="asmith") + "\n" for n in range(9)))
    sources = [{"paths": ["auth.log*"], "format": "auth", "label": "auth", "index_dir": "ix"}]
    checked = validate({"sources": sources}, AccessLogSettings, source="t", base_dir=tmp_path)
    assert isinstance(checked, AccessLogSettings)
    connector = AccessLogConnector("logs", checked)
    identity = asked(login("asmith", "access_log:logs/auth"))
    before: list[Record] = list(connector.collect(identity))
    database = next((tmp_path / "ix").glob("*.sqlite"))
    with sqlite3.connect(database) as db:
        (first,) = db.execute("SELECT id FROM files").fetchall()
    db.close()
    log.rename(tmp_path / "auth.log.1")
    (tmp_path / "auth.log.2.gz").write_bytes(gzip.compress((tmp_path / "auth.log.1").read_bytes()))
    (tmp_path / "auth.log.1").unlink()
    after = list(connector.collect(identity))
    assert [r.fields for r in after] == [r.fields for r in before]
    assert len(after) == 9
    assert [r.location for r in after] == [
        f"{tmp_path / 'auth.log.2.gz'} line {n}" for n in range(1, 10)
    ]
    with sqlite3.connect(database) as db:
        kept = db.execute("SELECT id, path FROM files").fetchall()
    db.close()
    assert kept == [(first[0], str(tmp_path / "auth.log.2.gz"))]


def test_an_index_that_cannot_be_kept_fails_the_collection(tmp_path: Path) -> None:
    """A folder that cannot be made is an error naming the source, not a silent scan."""
    (tmp_path / "auth.log").write_text(AUTH.format(n=1, user="asmith") + "\n")
    (tmp_path / "taken").write_text("a file, not a folder")
    sources = [{"paths": ["auth.log"], "format": "auth", "label": "auth", "index_dir": "taken/ix"}]
    checked = validate({"sources": sources}, AccessLogSettings, source="t", base_dir=tmp_path)
    assert isinstance(checked, AccessLogSettings)
    connector = AccessLogConnector("logs", checked)
    with pytest.raises(ConnectorError, match=r"source 'auth': its index in .*taken/ix cannot"):
        list(connector.collect(asked(login("asmith", "access_log:logs/auth"))))


def test_an_index_of_another_format_or_version_is_rebuilt(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text('{"user": "asmith"}\n')
    for fmt in ("jsonl", "auth", "jsonl"):
        index = LogIndex(tmp_path / "ix", "x", fmt)
        try:
            index.update([log])
            assert index.db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() == (
                fmt,
            )
            assert index.db.execute("SELECT count(*) FROM files").fetchone() == (1,)
        finally:
            index.close()


@pytest.mark.parametrize("damage", ["wrong length", "broken block"])
def test_a_damaged_compressed_log_fails_as_without_the_index(tmp_path: Path, damage: str) -> None:
    """Damage found while indexing fails the collection with the file named, as a scan does."""
    good = "".join(AUTH.format(n=n % 10, user=f"user{n}") + "\n" for n in range(50_000))
    data = gzip.compress(good.encode())
    damaged = {
        "wrong length": data[:-4] + b"\0\0\0\0",
        "broken block": with_a_broken_block(data),
    }[damage]
    (tmp_path / "auth.log.2.gz").write_bytes(damaged)
    identity = asked(login("asmith", "access_log:logs/auth"))
    for index in ({}, {"index_dir": "ix"}):
        source = {"paths": ["auth.log*"], "format": "auth", "label": "auth", **index}
        raw = {"sources": [source]}
        checked = validate(raw, AccessLogSettings, source="t", base_dir=tmp_path)
        assert isinstance(checked, AccessLogSettings)
        with pytest.raises(ConnectorError, match=r"auth\.log\.2\.gz: cannot be read"):
            list(AccessLogConnector("logs", checked).collect(identity))


@pytest.mark.parametrize("damage", ["cut short", "broken block"])
def test_a_damaged_new_rotation_fails_naming_it(tmp_path: Path, damage: str) -> None:
    """A compressed file the index has no entry for is first compared with the entries of
    files gone (a rotation keeps its entries): damage found there fails the collection with
    the file named, as a scan does, never with the inflater's own exception."""
    text = "".join(AUTH.format(n=n % 10, user=f"user{n}") + "\n" for n in range(5_000))
    data = gzip.compress(text.encode())
    (tmp_path / "auth.log.1").write_text(text)
    identity = asked(login("asmith", "access_log:logs/auth"))
    source = {"paths": ["auth.log*"], "format": "auth", "label": "auth", "index_dir": "ix"}
    checked = validate({"sources": [source]}, AccessLogSettings, source="t", base_dir=tmp_path)
    assert isinstance(checked, AccessLogSettings)
    assert list(AccessLogConnector("logs", checked).collect(identity)) == []  # indexed
    (tmp_path / "auth.log.1").unlink()
    damaged = {"cut short": data[:200], "broken block": with_a_broken_block(data)}
    (tmp_path / "auth.log.2.gz").write_bytes(damaged[damage])
    with pytest.raises(ConnectorError, match=r"auth\.log\.2\.gz: cannot be read"):
        list(AccessLogConnector("logs", checked).collect(identity))


def test_compressed_files_read_ahead_give_what_a_scan_gives(tmp_path: Path) -> None:
    """Several compressed rotations, read ahead while the live log is read: the same records,
    in the same order, as scanning them, however many are needed."""

    def lines(first: int) -> bytes:
        users = ("asmith", "basmith", "user1", "ASMITH")
        text = (AUTH.format(n=n % 10, user=users[n % 4]) + "\n" for n in range(first, first + 400))
        return "".join(text).encode()

    (tmp_path / "auth.log").write_bytes(lines(0))
    for rotation in range(1, 5):
        (tmp_path / f"auth.log.{rotation}.gz").write_bytes(gzip.compress(lines(rotation * 400)))
    identity = asked(login("asmith", "access_log:logs/auth"))
    for limit in (10_000, 250, 30):
        found = []
        for index in ({}, {"index_dir": "ix"}):
            source = {"paths": ["auth.log*"], "format": "auth", "label": "auth", **index}
            raw = {"sources": [source], "max_records": limit}
            checked = validate(raw, AccessLogSettings, source="t", base_dir=tmp_path)
            assert isinstance(checked, AccessLogSettings)
            found.append(list(AccessLogConnector("logs", checked).collect(identity)))
        assert found[0] == found[1]
        assert len(found[1]) == min(limit, 1000)
