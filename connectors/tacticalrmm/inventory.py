"""What a monitored computer is: its hardware, disks and software as the agent recorded
them, read from named properties only."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sarbot.connector import (
    JSONValue,
    jsonable,
)

SOFTWARE_KEYS = {
    "name": "Name",
    "version": "Version",
    "publisher": "Publisher",
    "install_date": "Install date",
    "size": "Size",
}


DISK_KEYS = {
    "device": "Device",
    "fstype": "File system",
    "total": "Total",
    "used": "Used",
    "free": "Free",
    "percent": "Percent used",
}


# Disk devices shown as recorded: drive letters, /dev paths and bare names
# (tmpfs, overlay).  Anything else (//server/share, host:/path) may name a person.
SAFE_DEVICE = re.compile(r"[A-Za-z]:\\?|/dev/[\w.+-]+(?:/[\w.+-]+)*|[\w.+-]+")


WITHHELD_DEVICE = "[withheld: a network or personal path]"


def json_of(value: Any) -> Any:
    """A JSON column's value: parsed by the driver (PostgreSQL) or stored as text (SQLite)."""
    if isinstance(value, str | bytes):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


SCALARS = (str, int, float, bool)
SCALAR_TYPES: frozenset[type[JSONValue]] = frozenset(SCALARS)


def scalar(value: Any) -> JSONValue:
    return value if isinstance(value, SCALARS) else None


def texts(value: Any) -> list[str]:
    items = value if isinstance(value, list) else []
    return [v.strip() for v in items if isinstance(v, str) and v.strip()]


def entries(
    items: Any, keys: Mapping[str, str], gathered: list[str] | None = None
) -> list[dict[str, JSONValue]]:
    """Chosen properties of each object in a JSON list, under human-readable names; a value
    that is not a plain JSON scalar (an object, a list, null) is left empty.  Every text
    kept is added to ``gathered`` when it is given.  A computer can list hundreds of programs,
    so this loop is kept plain."""
    if not isinstance(items, list):
        return []
    pairs = tuple(keys.items())
    found: list[dict[str, JSONValue]] = []
    gather = (gathered if gathered is not None else []).append
    for o in items:
        if isinstance(o, dict):
            get = o.get
            entry: dict[str, JSONValue] = {}
            for key, label in pairs:
                value = get(key)
                if type(value) is str:
                    gather(value)
                    entry[label] = value
                else:
                    entry[label] = value if type(value) in SCALAR_TYPES else None
            found.append(entry)
    return found


def timestamp(value: Any) -> JSONValue:
    """A stored time in ISO 8601, UTC; Django stores naive times as UTC."""
    when = value
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.strip())
        except ValueError:
            return value
    if not isinstance(when, datetime):
        return jsonable(value)
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


def boot_time(value: Any) -> JSONValue:
    """The agent records the boot time as seconds since the epoch."""
    try:
        return datetime.fromtimestamp(float(value), UTC).isoformat()
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def ip_of(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address, written alone or with its prefix (``10.0.0.15/24``); an IPv6 zone
    (``fe80::1%eth0``, any text the agent stored) is left out."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    address, slash, prefix = text.partition("/")
    try:
        if "%" not in text and (not slash or (prefix.isascii() and prefix.isdigit())):
            # The usual ``10.0.0.15/24``: the address alone, with a prefix it can have,
            # is what ip_interface reads, without building its network.
            ip = ipaddress.ip_address(address)
            if not slash or int(prefix) <= ip.max_prefixlen:
                return ip
        return ipaddress.ip_interface(text).ip
    except ValueError:
        return None


def disks(value: Any) -> list[JSONValue]:
    """Disk usage as the agent last reported it; a device that is a path to a share is withheld."""
    found = entries(json_of(value), DISK_KEYS)
    for disk in found:
        device = disk["Device"]
        if isinstance(device, str) and not SAFE_DEVICE.fullmatch(device.strip()):
            disk["Device"] = WITHHELD_DEVICE
    return [*found]


def software(documents: Iterable[Any], gathered: list[str]) -> list[JSONValue]:
    """Installed programs; install locations and uninstall commands are left out.  Every
    text of them is added to ``gathered``, for the withholding's search (``scrub_fields``)."""
    return [item for doc in documents for item in entries(json_of(doc), SOFTWARE_KEYS, gathered)]


def wmi_objects(wmi: dict[str, Any], key: str) -> list[dict[str, Any]]:
    objects = []
    items = wmi.get(key)
    for item in items if isinstance(items, list) else []:
        merged: dict[str, Any] = {}
        for part in item if isinstance(item, list) else [item]:
            merged.update(part if isinstance(part, dict) else {})
        objects.append(merged)
    return objects


def wmi_text(value: Any) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def wmi_first(wmi: dict[str, Any], key: str, prop: str) -> str | None:
    return wmi_text(next((o.get(prop) for o in wmi_objects(wmi, key)), None))


def local_ips(wmi: dict[str, Any]) -> list[str]:
    found = [a for c in wmi_objects(wmi, "network_config") for a in texts(c.get("IPAddress"))]
    addresses = [ip for v in found + texts(wmi.get("local_ips")) if (ip := ip_of(v))]
    return list(dict.fromkeys(str(ip) for ip in addresses if not ip.is_loopback))


def cpus(wmi: dict[str, Any]) -> list[str]:
    found = []
    for cpu in wmi_objects(wmi, "cpu"):
        name = wmi_text(cpu.get("Name"))
        cores, threads = cpu.get("NumberOfCores"), cpu.get("NumberOfLogicalProcessors")
        if name:
            found.append(f"{name}, {cores}C/{threads}T" if cores and threads else name)
    return found or texts(wmi.get("cpus"))


def make_model(wmi: dict[str, Any]) -> str | None:
    if isinstance(wmi.get("make_model"), str):
        return wmi_text(wmi["make_model"])
    parts = (wmi_first(wmi, "comp_sys_prod", "Vendor"), wmi_first(wmi, "comp_sys", "Model"))
    return " ".join(p for p in parts if p) or None


def serial_number(wmi: dict[str, Any]) -> str | None:
    if isinstance(wmi.get("serialnumber"), str):
        return wmi_text(wmi["serialnumber"])
    return wmi_first(wmi, "bios", "SerialNumber")
