"""Values WordPress stores: PHP-serialized arrays (sessions, locations) and times."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime

import phpserialize

from sarbot.connector import (
    JSONValue,
    jsonable,
)

LOCATION_META = {
    "description": "City",
    "country": "Country",
    "latitude": "Latitude",
    "longitude": "Longitude",
    "ip": "IP address",
}


class Unreadable(ValueError):
    """A serialized meta value is malformed, or holds a PHP object."""


def unserialize(value: str) -> object:
    """A PHP-serialized value; without an object hook, PHP objects are refused."""
    try:
        return phpserialize.loads(value.encode("utf-8"), decode_strings=True)
    except (ValueError, TypeError, RecursionError) as exc:
        raise Unreadable(type(exc).__name__) from None


def sessions_of(value: str) -> list[dict[str, JSONValue]]:
    """Each stored session's IP, browser and times; the token hashes (array keys) are dropped."""
    data = unserialize(value)
    if not isinstance(data, Mapping) or not all(isinstance(s, Mapping) for s in data.values()):
        raise Unreadable("not an array of sessions")
    sessions: list[dict[str, JSONValue]] = [
        {
            "IP address": text_or_none(session.get("ip")),
            "User agent": text_or_none(session.get("ua")),
            "Logged in (UTC)": unix_time(session.get("login")),
            "Expires (UTC)": unix_time(session.get("expiration")),
        }
        for session in data.values()
    ]
    return sorted(sessions, key=lambda s: [str(v) for v in s.values()])


def session_keys(
    sessions: Iterable[dict[str, JSONValue]],
) -> Iterator[tuple[str, dict[str, JSONValue]]]:
    """A stable key per session from its times; never from its token."""
    counts: dict[str, int] = {}
    for session in sessions:
        base = f"{session['Logged in (UTC)']}/{session['Expires (UTC)']}"
        counts[base] = counts.get(base, 0) + 1
        yield f"{base}/{counts[base]}", session


def location_of(value: str) -> dict[str, JSONValue]:
    data = unserialize(value)
    if not isinstance(data, Mapping):
        raise Unreadable("not an array")
    return {label: jsonable(data[key]) for key, label in LOCATION_META.items() if data.get(key)}


def text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def unix_time(value: object) -> str | None:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    try:
        return datetime.fromtimestamp(value, UTC).isoformat()
    except (OverflowError, OSError, ValueError):
        return None


def gmt(value: object) -> JSONValue:
    """A DATETIME column WordPress writes in GMT, as ISO 8601; its zero date as None."""
    if isinstance(value, str):
        if not value or value.startswith("0000-00-00"):
            return None
        try:
            when: object = datetime.fromisoformat(value)
        except ValueError:
            return value
        value = when
    if isinstance(value, datetime):
        if value.tzinfo is None:  # as stored: ISO 8601 of the time, then UTC's offset
            return value.isoformat() + "+00:00"
        return value.replace(tzinfo=UTC).isoformat()
    return jsonable(value)
