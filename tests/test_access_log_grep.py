"""Plain log files searched by the system's GNU grep (``connectors.loggrep``).

grep stands in for the Python block search only where it hands on the same lines: the
reference is reading every line (``tests/test_access_log_prefilter.py``), on real files and
the real grep.  A file with a long line, a compressed file and a value that is not ASCII go
to the Python scan, and grep is never told the values on its command line.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors import loggrep
from connectors.access_log import AccessLogConnector, AccessLogSettings
from connectors.loggrep import CHECK_BYTES, WINDOW, Ahead, Search, gnu_grep
from connectors.logmatch import Matcher
from connectors.logscan import MAX_LINE_BYTES
from sarbot.config import validate
from sarbot.errors import ConnectorError
from tests.test_access_log_prefilter import (
    CASES,
    FORMATS,
    IDENTITIES,
    concerning,
    log_file,
    read_lines,
)

ASCII_ONLY = ["alice", "lookalikes", "spaced", "backtick"]  # grep is given their values
SPELLED_OTHERWISE = [
    ("alice", "combined", "GET /?u=%41smith HTTP/1.1"),
    ("alice", "combined", "GET /?u=alice%40EXAMPLE%2etest HTTP/1.1"),
    ("alice", "auth", "Accepted password for ASMITH from 192.0.2.1"),
    ("lookalikes", "auth", "for \u212aAI from"),  # KELVIN SIGN composes to K
    ("lookalikes", "combined", "GET /?u=%E2%84%AAai"),
    ("lookalikes", "auth", "for ALİ from"),  # İ lower-cases to i and a combining dot
    ("alice", "jsonl", '{"user": "\\u0061smith"}'),
    ("spaced", "combined", "GET /?n=Mary+Ann&x=%20"),
    ("spaced", "combined", "GET /?e=%6D%61%72%79%2E%61%6E%6E%40example.test"),
    ("lookalikes", "combined", "GET /?u=AL%C4%B0"),
    ("backtick", "combined", "GET /?u=`ka%69 HTTP/1.1"),
    ("long", "combined", "GET /?u=%E2%84%AA" + "k" * 64 + " HTTP/1.1"),
]


def grep_lines(path: Path, matcher: Matcher, fmt: str) -> list[Any]:
    """What a search of one file hands on, through the connector's own test."""
    with Ahead([path], matcher.prefilter(fmt)) as ahead:
        search = ahead.take(0)
        assert search is not None
        with search:
            return concerning(search.lines(), matcher, fmt)


@pytest.fixture
def grep_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a search falls back to the Python scan."""

    def python_scan(*args: object) -> Iterator[Any]:
        raise AssertionError("the Python scan was used")

    monkeypatch.setattr(loggrep, "candidate_lines", python_scan)


def test_the_machine_has_gnu_grep() -> None:
    """The search is only faster where GNU grep is installed, as on every Debian machine."""
    assert gnu_grep() is not None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=log_file(), fmt=st.sampled_from(FORMATS), who=st.sampled_from(ASCII_ONLY))
def test_grep_hands_on_every_line_the_line_reader_would(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, fmt: str, who: str
) -> None:
    """Random lines (values in any case and spelling, invalid UTF-8, CRLF, lines near the
    longest an entry may be): the lines handed on are those reading every line finds."""
    path = tmp_path_factory.mktemp("logs") / "x.log"
    path.write_bytes(data)
    matcher = Matcher(CASES[who])
    assert grep_lines(path, matcher, fmt) == concerning(read_lines(io.BytesIO(data)), matcher, fmt)


@pytest.mark.parametrize(("who", "fmt", "line"), SPELLED_OTHERWISE)
def test_grep_finds_values_spelled_otherwise(
    tmp_path: Path, grep_only: None, who: str, fmt: str, line: str
) -> None:
    """Each line concerns the person only once decoded, composed or lower-cased; grep,
    not the Python scan, hands it on with its number."""
    matcher = Matcher(CASES[who])
    path = tmp_path / "x.log"
    path.write_bytes(b"filler line\n" * 50 + line.encode() + b"\r\n" + b"filler line\n" * 50)
    assert grep_lines(path, matcher, fmt) == [(51, line)]


def test_a_file_without_a_newline_at_its_end(tmp_path: Path, grep_only: None) -> None:
    path = tmp_path / "x.log"
    path.write_bytes(b"\n\nfor ASMITH from\nnobody\nfor asmith again")
    matcher = Matcher(IDENTITIES["alice"])
    assert grep_lines(path, matcher, "auth") == [(3, "for ASMITH from"), (5, "for asmith again")]


@pytest.mark.parametrize("size", [WINDOW - 1, WINDOW, MAX_LINE_BYTES - 1, MAX_LINE_BYTES, 200_000])
@pytest.mark.parametrize("at", [0, 1, CHECK_BYTES - WINDOW - 1, CHECK_BYTES - 3, CHECK_BYTES + 5])
def test_a_long_line_anywhere_is_read_by_the_python_scan(
    tmp_path: Path, size: int, at: int
) -> None:
    """A line of 64 KiB or more, wherever it starts against the reads of the check, sends
    the file to the Python scan (one under 32 KiB never does); every line that is too long
    to be an entry is handed on."""
    path = tmp_path / "x.log"
    before = (b"f" * 99 + b"\n") * (at // 100) + (
        b"g" * (at % 100 - 1) + b"\n" if at % 100 else b""
    )
    path.write_bytes(before + b"for asmith " + b"y" * (size - 11) + b"\nfor asmith\n" + b"z" * size)
    matcher = Matcher(IDENTITIES["alice"])
    with path.open("rb") as stream:
        long = loggrep._has_long_lines(stream, path)  # between the two, either: the results agree
        assert long if size >= MAX_LINE_BYTES else (not long if size < WINDOW else True)
        assert stream.tell() == 0
    expected = concerning(read_lines(io.BytesIO(path.read_bytes())), matcher, "auth")
    assert grep_lines(path, matcher, "auth") == expected
    if size >= MAX_LINE_BYTES:
        assert [line for _, line in expected].count(None) == 2


def test_a_file_of_short_lines_is_not_sent_to_the_python_scan(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_bytes((b"y" * (WINDOW - 1) + b"\n") * 70)  # longer than one read of the check
    with path.open("rb") as stream:
        assert loggrep._has_long_lines(stream, path) is False


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=st.lists(log_file(), min_size=1, max_size=5),
    who=st.sampled_from(sorted(IDENTITIES)),
    compress=st.lists(st.booleans(), min_size=5, max_size=5),
    limit=st.integers(1, 6),
)
def test_the_connector_finds_the_same_with_and_without_grep(
    tmp_path_factory: pytest.TempPathFactory,
    files: list[bytes],
    who: str,
    compress: list[bool],
    limit: int,
) -> None:
    """Whole collections over several files, some compressed, stopping at small limits
    while later files are still being searched: the same records and notes either way."""
    folder = tmp_path_factory.mktemp("logs")
    for n, data in enumerate(files):
        (folder / f"auth.log.{n}").write_bytes(gzip.compress(data) if compress[n] else data)
    found = []
    for use_grep in (True, False):
        settings_ = validate(
            {
                "sources": [{"paths": ["auth.log.*"], "format": "auth", "label": "auth"}],
                "max_records": limit,
                "use_grep": use_grep,
            },
            AccessLogSettings,
            source="t",
            base_dir=folder,
        )
        assert isinstance(settings_, AccessLogSettings)
        found.append(list(AccessLogConnector("logs", settings_).collect(IDENTITIES[who])))
    assert found[0] == found[1]


class Recorded:
    """Every grep started, as started (its arguments) and as left (its process)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.args: list[list[str]] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        real = subprocess.Popen

        def popen(args: list[str], **options: Any) -> subprocess.Popen[bytes]:
            self.args.append(list(args))
            process = real(args, **options)
            self.processes.append(process)
            return process

        monkeypatch.setattr(subprocess, "Popen", popen)


def many_files(folder: Path, count: int) -> AccessLogSettings:
    line = b"Mar  1 09:00:00 gw1 sshd[1]: Accepted password for asmith from 192.0.2.1 port 1 ssh2\n"
    for n in range(count):
        (folder / f"auth.log.{n}").write_bytes(
            b"Mar  1 09:00:00 gw1 CRON[2]: noise\n" * 5000 + line * 200
        )
    settings_ = validate(
        {
            "sources": [{"paths": ["auth.log.*"], "format": "auth", "label": "auth"}],
            "max_records": 3,
        },
        AccessLogSettings,
        source="t",
        base_dir=folder,
    )
    assert isinstance(settings_, AccessLogSettings)
    return settings_


def test_the_values_never_reach_greps_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other users of the machine can read a command line: the values go through a pipe."""
    recorded = Recorded(monkeypatch)
    records = list(AccessLogConnector("logs", many_files(tmp_path, 1)).collect(IDENTITIES["alice"]))
    assert len(records) == 3
    assert recorded.args
    for args in recorded.args:
        assert not any("asmith" in arg or "alice" in arg for arg in args), args


def test_searches_left_when_the_limit_is_reached_are_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first file fills the limit: the greps started for the files after it are
    stopped and waited for, and no file is left open."""
    recorded = Recorded(monkeypatch)
    connector = AccessLogConnector("logs", many_files(tmp_path, 4))
    records = list(connector.collect(IDENTITIES["alice"]))
    assert len(records) == 3 and "stopped at that limit" in " ".join(records[-1].notes)
    assert len(recorded.processes) >= 2
    assert all(process.returncode is not None for process in recorded.processes)
    assert all(process.stdout is None or process.stdout.closed for process in recorded.processes)


def test_without_grep_the_python_scan_finds_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings_ = many_files(tmp_path, 2)
    with_grep = list(AccessLogConnector("logs", settings_).collect(IDENTITIES["alice"]))
    monkeypatch.setattr(loggrep, "gnu_grep", lambda: None)
    recorded = Recorded(monkeypatch)
    without = list(AccessLogConnector("logs", settings_).collect(IDENTITIES["alice"]))
    assert without == with_grep and not recorded.args


@pytest.mark.parametrize("output", ["nothing", "a line", "half a line"])
def test_a_grep_that_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str) -> None:
    """A read error inside grep cannot be caused on a healthy disk; a grep that ends with
    status 2 stands in for it, beside the real grep in every other test.  Before it has
    handed on a line, the Python scan reads the file instead (and fails there if the
    file cannot be read); after, or inside a line, the collection fails."""
    settings_ = many_files(tmp_path, 1)
    expected = list(AccessLogConnector("logs", settings_).collect(IDENTITIES["alice"]))
    line = "5001:Mar  1 09:00:00 gw1 sshd[1]: Accepted password for asmith from 192.0.2.1"
    printed = {"nothing": "", "a line": f"echo '{line}'\n", "half a line": "printf '5001:Mar'\n"}
    failing = tmp_path / "grep"
    failing.write_text(
        f"#!/bin/sh\n{printed[output]}echo 'grep: (standard input): I/O error' >&2\nexit 2\n"
    )
    failing.chmod(0o755)
    monkeypatch.setattr(loggrep, "gnu_grep", lambda: str(failing))
    connector = AccessLogConnector("logs", settings_)
    if output == "nothing":
        assert list(connector.collect(IDENTITIES["alice"])) == expected
        return
    with pytest.raises(ConnectorError, match=r"log\.0: cannot be read \(grep ended with status 2"):
        list(connector.collect(IDENTITIES["alice"]))


def test_output_that_ends_inside_a_line_is_not_taken_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GNU grep ends every line it prints; a cut one is an error even with status 0."""
    cutting = tmp_path / "grep"
    cutting.write_text("#!/bin/sh\nprintf '5001:Mar  1 09:00:00 gw1 sshd[1]: Accepted pass'\n")
    cutting.chmod(0o755)
    monkeypatch.setattr(loggrep, "gnu_grep", lambda: str(cutting))
    connector = AccessLogConnector("logs", many_files(tmp_path, 1))
    with pytest.raises(ConnectorError, match=r"status 0, inside a line"):
        list(connector.collect(IDENTITIES["alice"]))


def test_a_file_that_cannot_be_read_for_the_check_fails_the_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An I/O error while the file is checked for long lines (caused here: a healthy disk
    does not fail a read) names the file."""

    def failing_pread(fd: int, size: int, offset: int) -> bytes:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "pread", failing_pread)
    connector = AccessLogConnector("logs", many_files(tmp_path, 1))
    with pytest.raises(ConnectorError, match=r"auth\.log\.0: cannot be read: Input/output"):
        list(connector.collect(IDENTITIES["alice"]))


LOW_DESCRIPTORS = """
import os, sys
from pathlib import Path
from connectors.access_log import AccessLogConnector, AccessLogSettings
from sarbot.config import validate
from sarbot.testing.identity import asked, login
out = os.dup(1)
for fd in map(int, sys.argv[2:]):
    os.close(fd)
settings = validate(
    {"sources": [{"paths": ["auth.log"], "format": "auth", "label": "auth"}]},
    AccessLogSettings, source="t", base_dir=Path(sys.argv[1]),
)
who = asked(login("asmith", "access_log:logs/auth"))
found = [r.location for r in AccessLogConnector("logs", settings).collect(who)]
os.write(out, repr(found).encode())
"""


@pytest.mark.parametrize("closed", [["0", "2"], ["0", "1"], ["0", "1", "2"]])
def test_a_daemon_started_with_standard_descriptors_closed(
    tmp_path: Path, closed: list[str]
) -> None:
    """With 0, 1 or 2 free, the pipe of values could take one, which the child's own
    stdin, stdout or stderr would then replace: grep would read no values (and find
    nothing) or wait on its own output.  The search finds the line all the same."""
    log = tmp_path / "auth.log"
    log.write_bytes(
        b"Mar  1 09:00:00 gw1 sshd[1]: Accepted password for asmith from 192.0.2.1 port 1 ssh2\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", LOW_DESCRIPTORS, str(tmp_path), *closed],
        capture_output=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode() == repr([f"{log} line 1"])


def test_a_value_that_is_not_ascii_is_searched_in_python(tmp_path: Path) -> None:
    matcher = Matcher(IDENTITIES["unicode"])
    assert matcher.prefilter("auth").fixed_strings() is None
    with Ahead([tmp_path / "x.log"], matcher.prefilter("auth")) as ahead:
        assert ahead.take(0) is None


def test_a_compressed_file_is_searched_in_python(tmp_path: Path) -> None:
    path = tmp_path / "x.log.2.gz"
    path.write_bytes(gzip.compress(b"for asmith from\n"))
    with Ahead([path], Matcher(IDENTITIES["alice"]).prefilter("auth")) as ahead:
        assert ahead.take(0) is None


def test_a_search_reads_the_file_it_opened_not_its_path(tmp_path: Path, grep_only: None) -> None:
    """A log rotated while it is being searched: grep reads the file opened, not the one
    now at its path."""
    path = tmp_path / "auth.log"
    path.write_bytes(b"for asmith from\n")
    matcher = Matcher(IDENTITIES["alice"])
    with Ahead([path], matcher.prefilter("auth")) as ahead:
        search = ahead.take(0)
        assert isinstance(search, Search)
        path.rename(tmp_path / "auth.log.1")
        path.write_bytes(b"nobody\nfor asmith, the new file\n")
        with search:
            assert concerning(search.lines(), matcher, "auth") == [(1, "for asmith from")]
