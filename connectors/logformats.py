"""Line parsers for the ``access_log`` connector: auth.log, combined web logs, JSON lines.

Each parser turns one decoded line into a ``LogEntry`` (who, when, from where,
what, with what outcome) or a ``Skip`` saying why the line holds no entry.  The
raw line is never kept: only the fields named here leave a parser.  ``compression``
tells, from a file's first bytes, whether it is compressed, and how.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from typing import Any
from urllib.parse import parse_qsl, unquote

Status = str | int | float | bool | None

COMMAND_WITHHELD = (
    "The command run with sudo was withheld: command lines can hold passwords typed on them."
)
SWITCH_SERVICES = frozenset({"sudo", "sudo-i", "su", "su-l", "runuser", "runuser-l"})
FAILURE_WORDS = frozenset(
    {"fail", "failed", "failure", "denied", "deny", "rejected", "error", "invalid", "unauthorized"}
)
MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MONTHS = {name: number for number, name in enumerate(MONTH_NAMES, 1)}
# The first bytes of compressed files, whatever their names (logrotate's ``compresscmd``):
# bzip2's are its name, block size and the first block's (or the end's, if empty) magic.
COMPRESSIONS = (
    ("gzip", re.compile(rb"\x1f\x8b")),
    ("xz", re.compile(rb"\xfd7zXZ\x00")),
    ("bzip2", re.compile(rb"BZh[1-9](?:\x31\x41\x59\x26\x53\x59|\x17\x72\x45\x38\x50\x90)")),
    ("zstd", re.compile(rb"\x28\xb5\x2f\xfd")),
)


@dataclass(frozen=True)
class LogEntry:
    """What one log line says; ``trusted`` marks the user's own completed action."""

    user: str | None
    action: str
    timestamp: str | None = None
    ip: str | None = None
    status: Status = None
    query: tuple[tuple[str, str], ...] = ()
    trusted: bool = True
    notes: tuple[str, ...] = ()


class Skip(Enum):
    """Why a line gave no entry."""

    UNPARSABLE = "not a line of the expected format"
    IRRELEVANT = "a line of the format that names no user"


Parsed = LogEntry | Skip
LineParser = Callable[[str], Parsed]


@dataclass(frozen=True)
class JsonFields:
    """The keys (or dotted paths) of a JSON-lines entry's fields."""

    time: str = "time"
    user: str = "user"
    ip: str = "ip"
    action: str = "action"
    status: str = "status"


def compression(head: bytes) -> str | None:
    """The compression a file's first bytes are the magic of, if any."""
    return next((name for name, magic in COMPRESSIONS if magic.match(head)), None)


# --- auth.log (syslog) ---------------------------------------------------------------

_TRADITIONAL = re.compile(r"([A-Z][a-z]{2}) +(\d{1,2}) (\d{2}):(\d{2}):(\d{2}) (.*)")
_ISO_STAMP = re.compile(r"(\d{4}-\d{2}-\d{2}T[\d:.]+(?:Z|[+-]\d{2}:?\d{2})?) (.*)")
_HOST_PROGRAM = re.compile(r"\S+ ([^\s\[:]+)(?:\[\d+\])?: ?(.*)")
_SSH_AUTH = re.compile(
    r"(Accepted|Failed) (\S+) for (invalid user )?(.*) from (\S+) port \d+(?: |$)"
)
_SSH_INVALID = re.compile(r"Invalid user (.*) from (\S+?)(?: port \d+)?$")
_SSH_CLOSED = re.compile(
    r"(?:Disconnected from|Connection closed by) (authenticating |invalid )?user "
    r"(.*) (\S+) port \d+"
)
# The whole message, as pam_unix writes it: never a part of one, which may be text a client
# chose (sshd logs an unauthenticated client's disconnect message).
_PAM_SESSION = re.compile(
    r"pam_unix\(([^:)]+):session\): session (opened|closed) for user ([^\s(]+)"
    r"(?:\(uid=\d+\))?(?: by ([^\s(]*)(?:\(uid=\d+\))?)?\s*$"
)
_SUDO = re.compile(r"\s*(\S+) : (.*)")


class SyslogClock:
    """Dates syslog lines, which carry no year: a fixed year, or the file's last change.

    Without a fixed year, a line gets the year of the file's modification time,
    or the year before when that would put the line more than a day after it
    (a December line in a file last written in January).
    """

    def __init__(self, year: int | None, modified: datetime) -> None:
        self.year = year
        self.modified_year = modified.year
        self.latest = modified + timedelta(days=1)

    def stamp(self, month: int, day: int, hms: tuple[int, int, int]) -> str | None:
        years = [self.year] if self.year else [self.modified_year - n for n in range(5)]
        for year in years:
            try:
                when = datetime(year, month, day, *hms)
            except ValueError:  # 29 February outside a leap year, or day 31 in a short month
                continue
            if self.year or when <= self.latest:
                return when.isoformat()
        return None


def auth_parser(clock: SyslogClock) -> LineParser:
    """A parser for sshd, sudo and pam_unix lines in syslog's traditional or ISO form."""

    def parse(line: str) -> Parsed:
        if not line.strip():
            return Skip.IRRELEVANT
        timestamp, rest = _syslog_stamp(line, clock)
        host_program = _HOST_PROGRAM.match(rest) if timestamp else None
        if host_program is None:
            return Skip.UNPARSABLE
        program, message = host_program.groups()
        entry = _auth_message(program, message)
        return Skip.IRRELEVANT if entry is None else replace(entry, timestamp=timestamp)

    return parse


def _syslog_stamp(line: str, clock: SyslogClock) -> tuple[str | None, str]:
    if match := _TRADITIONAL.match(line):
        month = MONTHS.get(match[1])
        hms = (int(match[3]), int(match[4]), int(match[5]))
        if month is None or hms[0] > 23 or hms[1] > 59 or hms[2] > 60:
            return None, line
        return clock.stamp(month, int(match[2]), (hms[0], hms[1], min(hms[2], 59))), match[6]
    if match := _ISO_STAMP.match(line):
        try:
            return datetime.fromisoformat(match[1]).isoformat(), match[2]
        except ValueError:
            return None, line
    return None, line


def _auth_message(program: str, message: str) -> LogEntry | None:
    if program.startswith("sshd"):
        if match := _SSH_AUTH.match(message):
            outcome, method, invalid, user, ip = match.groups()
            accepted = outcome == "Accepted"
            unknown = ", user name unknown on this system" if invalid else ""
            action = f"SSH login {'accepted' if accepted else 'failed'} ({method}{unknown})"
            status = "accepted" if accepted else "failed"
            return LogEntry(user, action, ip=ip, status=status, trusted=accepted)
        if match := _SSH_INVALID.match(message):
            action = "SSH login attempt for a user name unknown on this system"
            return LogEntry(match[1], action, ip=match[2], status="failed", trusted=False)
        if match := _SSH_CLOSED.match(message):
            kind, user, ip = match.groups()
            if kind:
                action = "SSH connection closed before login"
                return LogEntry(user, action, ip=ip, status="not logged in", trusted=False)
            return LogEntry(user, "SSH connection closed", ip=ip, status="disconnected")
    if match := _PAM_SESSION.match(message):
        return _session(*match.groups())
    if program == "sudo" and (match := _SUDO.fullmatch(message)):
        return _sudo(match[1], match[2])
    return None


def _session(service: str, event: str, user: str, by: str | None) -> LogEntry | None:
    if service in SWITCH_SERVICES:
        # su and sudo sessions belong to the person who switched, named after "by".
        if not by:
            return None
        return LogEntry(by, f"Session {event} ({service}) as {user}", status=event)
    return LogEntry(user, f"Session {event} ({service})", status=event)


def _sudo(user: str, details: str) -> LogEntry:
    before, marker, _command = details.partition("COMMAND=")
    target, reasons = "", []
    for part in before.split(" ; "):
        key, equals, value = part.strip().partition("=")
        if equals and key == "USER":
            target = value
        elif not equals and key:
            reasons.append(key)
    action = f"sudo as {target}" if target else "sudo"
    status = "; ".join(reasons) if reasons else "allowed"
    notes = (COMMAND_WITHHELD,) if marker else ()
    return LogEntry(user, action, status=status, trusted=not reasons, notes=notes)


# --- combined (nginx / Apache) -------------------------------------------------------

_QUOTED = r'"((?:[^"\\]|\\.)*)"'
_COMBINED = re.compile(rf"(\S+) \S+ (\S+) \[([^\]]+)\] {_QUOTED} (\d{{3}}|-) (?:\d+|-)")
_CLF_TIME = re.compile(
    r"(\d{2})/([A-Z][a-z]{2})/(\d{4}):(\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})"
)
_METHOD = re.compile(r"[A-Z][A-Z_-]{0,19}")


def combined_parser() -> LineParser:
    """A parser for the combined (and common) log format of nginx and Apache."""

    def parse(line: str) -> Parsed:
        if not line.strip():
            return Skip.IRRELEVANT
        match = _COMBINED.match(line)
        timestamp = _clf_time(match[3]) if match else None
        if match is None or timestamp is None:
            return Skip.UNPARSABLE
        ip, user, _time, request, status = match.groups()
        action, query = _request(request)
        code = int(status) if status.isdigit() else None
        return LogEntry(
            user=None if user == "-" else user,
            action=action,
            timestamp=timestamp,
            ip=ip,
            status=code,
            query=query,
            trusted=code is not None and code < 400,
        )

    return parse


def _clf_time(text: str) -> str | None:
    match = _CLF_TIME.fullmatch(text)
    month = MONTHS.get(match[2]) if match else None
    if match is None or month is None:
        return None
    day, year, hour, minute, second = (int(match[i]) for i in (1, 3, 4, 5, 6))
    offset = timedelta(hours=int(match[8]), minutes=int(match[9]))
    zone = timezone(-offset if match[7] == "-" else offset)
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=zone).isoformat()
    except ValueError:
        return None


def _request(request: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The method and URL-decoded path without the query string, and the decoded query."""
    parts = request.split(" ")
    if len(parts) not in (2, 3) or not _METHOD.fullmatch(parts[0]):
        return "malformed request", ()
    path, _, query = parts[1].partition("?")
    pairs = parse_qsl(query.partition("#")[0], keep_blank_values=True, errors="replace")
    return f"{parts[0]} {unquote(path, errors='replace')}", tuple(pairs)


# --- JSON lines ----------------------------------------------------------------------


def jsonl_parser(fields: JsonFields) -> LineParser:
    """A parser for one JSON object per line, reading the configured fields."""

    def parse(line: str) -> Parsed:
        if not line.strip():
            return Skip.IRRELEVANT
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            return Skip.UNPARSABLE
        if not isinstance(obj, dict):
            return Skip.UNPARSABLE
        user = _field(obj, fields.user)
        ip = _field(obj, fields.ip)
        status = _scalar(_field(obj, fields.status))
        return LogEntry(
            user=str(user) if isinstance(user, str | int) and not isinstance(user, bool) else None,
            action=_text(_scalar(_field(obj, fields.action))),
            timestamp=_json_time(_field(obj, fields.time)),
            ip=ip if isinstance(ip, str) else None,
            status=status,
            trusted=not _looks_failed(status),
        )

    return parse


def _field(obj: dict[str, Any], name: str) -> Any:
    """A top-level key, or else a dotted path into nested objects."""
    if name in obj:
        return obj[name]
    current: Any = obj
    for part in name.split("."):
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    return current


def _scalar(value: Any) -> Status:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, sort_keys=True)


def _text(value: Status) -> str:
    return "" if value is None else str(value)


def _json_time(value: Any) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if value > 1e11 else value  # epoch milliseconds or seconds
        try:
            return datetime.fromtimestamp(seconds, UTC).isoformat()
        except (OverflowError, OSError, ValueError):
            return str(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value).isoformat()
        except ValueError:
            return value
    return None


def _looks_failed(status: Status) -> bool:
    if isinstance(status, bool):
        return not status
    if isinstance(status, int | float):
        return status >= 400
    if isinstance(status, str):
        word = status.strip().casefold()
        return word in FAILURE_WORDS or (word.isdigit() and int(word) >= 400)
    return False
