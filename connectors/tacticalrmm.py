"""``tacticalrmm``: the computers a person used, read from a Tactical RMM database.

Tactical RMM keeps, for every monitored computer (an *agent*), the user logged in
now (``logged_in_username``) and the last user who logged in
(``last_logged_in_user``), written ``user``, ``DOMAIN\\user`` or ``user@domain``.
A computer is linked to the person when one of those names is one of their
logins *at the computer's client*: the admin maps a client (``tacticalrmm:NAME/
CLIENT``) into a realm with the vault group and the Windows domains of the same
organisation, and a login matches only within its realm, with the same domain
(``Identity.account``).  ``asmith`` at one client is never ``asmith`` at another.
A name written ``user@domain`` also links the computer when it is exactly one of
the person's email addresses.  A computer linked only through its *last*
logged-in user may be used by someone else now: its public IP address and the
time it was last seen are withheld.

Every linked computer becomes one record: its names and addresses, operating
system, hardware and disk health, and the software installed on it.  Other people
who used it are withheld: their user names are replaced, and any exported text
that names them is withheld as well.  Text people write about a computer (its
description, notes, custom fields) is never read, and of the hardware inventory
(``wmi_detail``, which also records the console user and the registered owner)
only named hardware properties are.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, Field
from sqlalchemy import Connection, RowMapping, Select, column, func, or_, select, table

from connectors.readonly import read_only_engine
from sarbot.config import Section
from sarbot.connector import (
    Identifier,
    Identity,
    JSONValue,
    Record,
    Trust,
    fold,
    jsonable,
    split_account,
)
from sarbot.secretref import MaybeSecretStr

CATEGORY = "Monitored computer"
WITHHELD_USER = "[another person: withheld]"
WITHHELD_TEXT = "[withheld: it names another person]"
WITHHELD_DEVICE = "[withheld: a network or personal path]"
OTHERS_NOTE = "Information about other people who used this computer was withheld."
NOW_WITHHELD = "[withheld: the computer may be used by someone else now]"
LAST_USER_NOTE = (
    "You were the last person to log in to this computer, not the one logged in now: "
    "its current public IP address and the time it was last seen were withheld."
)
NOBODY = {"", "none"}  # the agent reports the text "None" when nobody is logged in
USER_FIELDS = {"logged_in_username": "Logged-in user", "last_logged_in_user": "Last logged-in user"}
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

AGENT_COLUMNS = (
    "id agent_id hostname operating_system public_ip last_seen boot_time total_ram disks"
    " wmi_detail site_id logged_in_username last_logged_in_user"
)
AGENTS = table("agents_agent", *(column(name) for name in AGENT_COLUMNS.split()))
SITES = table("clients_site", column("id"), column("client_id"), column("name"))
CLIENTS = table("clients_client", column("id"), column("name"))
SOFTWARE = table("software_installedsoftware", column("id"), column("agent_id"), column("software"))
DETAILS = select(
    *AGENTS.c,
    SITES.c.name.label("site_name"),
    CLIENTS.c.name.label("client_name"),
).select_from(
    AGENTS.outerjoin(SITES, SITES.c.id == AGENTS.c.site_id).outerjoin(
        CLIENTS, CLIENTS.c.id == SITES.c.client_id
    )
)


class TacticalRmmSettings(Section):
    url: MaybeSecretStr
    include_software: bool = True
    clients: tuple[Annotated[str, Field(min_length=1)], ...] = ()


class TacticalRmmConnector:
    """Finds the agents a person was logged in to and exports each as one record."""

    Settings: ClassVar[type[BaseModel]] = TacticalRmmSettings
    namespace_trust: ClassVar[Trust] = Trust.CONTROLLER

    def __init__(self, name: str, settings: TacticalRmmSettings) -> None:
        self.name = name
        self.settings = settings
        self.engine = read_only_engine(settings.url)

    def check(self) -> None:
        """Run the connector's queries with LIMIT 0: the tables and columns exist."""
        with self._connect() as connection:
            connection.execute(DETAILS.limit(0)).all()
            if self.settings.include_software:
                connection.execute(select(*SOFTWARE.c).limit(0)).all()

    def collect(self, identity: Identity) -> Iterator[Record]:
        subject = Subject.of(identity, self.name)
        if not subject.needles:
            return
        with self._connect() as connection:
            for agent_pk in self._candidates(connection, subject):
                row = connection.execute(DETAILS.where(AGENTS.c.id == agent_pk)).mappings().first()
                link = subject.linked(row) if row is not None else None
                if row is not None and link is not None:
                    yield self._record(connection, row, subject, link)

    def close(self) -> None:
        self.engine.dispose()

    def _connect(self) -> Connection:
        connection = self.engine.connect()
        if self.engine.dialect.name == "postgresql":
            connection.execution_options(postgresql_readonly=True)
        return connection

    def _candidates(self, connection: Connection, subject: Subject) -> list[int]:
        """Agents whose user fields hold one of the subject's names, coarse in SQL, then exact."""
        users = [AGENTS.c[name] for name in USER_FIELDS]
        query: Select[Any] = (
            select(AGENTS.c.id, *users, CLIENTS.c.name.label("client_name"))
            .select_from(
                AGENTS.outerjoin(SITES, SITES.c.id == AGENTS.c.site_id).outerjoin(
                    CLIENTS, CLIENTS.c.id == SITES.c.client_id
                )
            )
            .where(
                or_(
                    *(
                        func.lower(user).like(like_pattern(needle), escape="/")
                        for needle in sorted(subject.needles)
                        for user in users
                    )
                )
            )
        )
        if self.settings.clients:
            sites = select(SITES.c.id).join(CLIENTS, CLIENTS.c.id == SITES.c.client_id)
            query = query.where(
                AGENTS.c.site_id.in_(sites.where(CLIENTS.c.name.in_(self.settings.clients)))
            )
        rows = connection.execute(query.order_by(AGENTS.c.id), execution_options={"yield_per": 500})
        return [row["id"] for row in rows.mappings() if subject.linked(row) is not None]

    def _record(
        self,
        connection: Connection,
        row: RowMapping,
        subject: Subject,
        link: Link,
    ) -> Record:
        users = [row[name] for name in USER_FIELDS]
        others = [user for user in users if subject.other(user, row)]
        own = [user for user in users if subject.match(user, row)] + subject.names()
        withhold = Withholder(others, own)
        fields = {k: withhold.scrub(v) for k, v in self._machine(connection, row).items()}
        for name, label in USER_FIELDS.items():
            value = row[name]
            shown = WITHHELD_USER if subject.other(value, row) else value
            fields[label] = shown if is_user(value) else None
        notes = [OTHERS_NOTE] if others else []
        if not link.now:
            fields["Public IP address"] = NOW_WITHHELD
            fields["Last seen"] = NOW_WITHHELD
            notes.append(LAST_USER_NOTE)
        hostname = fields["Hostname"]
        host = hostname if isinstance(hostname, str) and hostname != WITHHELD_TEXT else None
        where = f"tacticalrmm '{self.name}': agents_agent id {row['id']}"
        yields = (
            [Identifier("hostname", host, f"{where}, hostname", "hostname", Trust.CONTROLLER)]
            if host
            else []
        )
        addresses = [(fields["Public IP address"], "public_ip")]
        addresses += [
            (a, "wmi_detail, local IP addresses") for a in texts(fields["Local IP addresses"])
        ]
        for value, source in addresses:
            ip = ip_of(value)
            if ip and all(y.value != str(ip) for y in yields):
                yields.append(
                    Identifier("ip", str(ip), f"{where}, {source}", "ip", Trust.CONTROLLER)
                )
        return Record(
            category=CATEGORY,
            fields=fields,
            found_by=link.identifier,
            location=f"agents_agent id {row['id']} ({host or 'hostname withheld'})",
            yields=tuple(yields),
            notes=tuple(notes),
            key=f"agent:{row['agent_id'] or row['id']}",
        )

    def _machine(self, connection: Connection, row: RowMapping) -> dict[str, JSONValue]:
        wmi = json_of(row["wmi_detail"])
        wmi = wmi if isinstance(wmi, dict) else {}
        fields: dict[str, JSONValue] = {
            "Hostname": jsonable(row["hostname"]),
            "Client": jsonable(row["client_name"]),
            "Site": jsonable(row["site_name"]),
            "Agent ID": jsonable(row["agent_id"]),
            "Operating system": jsonable(row["operating_system"]),
            "Public IP address": jsonable(row["public_ip"]),
            "Local IP addresses": list(local_ips(wmi)),
            "Last seen": timestamp(row["last_seen"]),
            # Filled in after the scrub, with other people's names withheld.
            USER_FIELDS["logged_in_username"]: None,
            USER_FIELDS["last_logged_in_user"]: None,
            "Last boot": boot_time(row["boot_time"]),
            "Make and model": make_model(wmi),
            "Serial number": serial_number(wmi),
            "CPU": list(cpus(wmi)),
            "Total RAM (GB)": jsonable(row["total_ram"]),
            "Disks": disks(row["disks"]),
        }
        if self.settings.include_software:
            query = select(SOFTWARE.c.software).where(SOFTWARE.c.agent_id == row["id"])
            documents = connection.execute(query.order_by(SOFTWARE.c.id)).scalars()
            fields["Installed software"] = software(documents)
        return fields


@dataclass(frozen=True)
class Link:
    """How an agent is linked to the person: by which identifier, and through whom."""

    identifier: Identifier
    now: bool
    """Through the user logged in now (not only the last one who logged in)."""


@dataclass(frozen=True)
class Subject:
    """The identifiers of this round that can name a Tactical RMM user, and the person's own."""

    identity: Identity
    connector: str
    needles: frozenset[str]

    @classmethod
    def of(cls, identity: Identity, connector: str) -> Subject:
        names = [split_account(i.value)[0] for i in identity.of_kind("username")]
        emails = [i.value for i in identity.of_kind("email")]
        # SQL's lower() keeps the length of what it lowers; casefold() may not (ß: ss).
        needles = {value.lower() for value in [*names, *emails] if value.strip()}
        return cls(identity, connector, frozenset(needles))

    def namespace(self, row: RowMapping) -> str:
        """Where an agent's user names belong: the agent's client."""
        client = row["client_name"]
        base = f"tacticalrmm:{self.connector}"
        return f"{base}/{client}" if isinstance(client, str) and client else base

    def match(self, stored: Any, row: RowMapping, *, known: bool = False) -> Identifier | None:
        if not is_user(stored):
            return None
        identity = self.identity
        return identity.address(stored, known=known) or identity.account(
            stored, self.namespace(row), known=known
        )

    def linked(self, row: RowMapping) -> Link | None:
        """How the agent links to the subject, or None."""
        if found := self.match(row["logged_in_username"], row):
            return Link(found, now=True)
        if found := self.match(row["last_logged_in_user"], row):
            # The current user may be the person too, under a name found in an earlier round.
            current = self.match(row["logged_in_username"], row, known=True)
            return Link(found, now=current is not None)
        return None

    def names(self) -> list[str]:
        own = [*self.identity.of_kind("username"), *self.identity.known]
        return [split_account(i.value)[0] for i in own if i.kind == "username"]

    def other(self, stored: Any, row: RowMapping) -> bool:
        """Whether a user field names somebody else than the person (in any round)."""
        if not is_user(stored) or self.match(stored, row) is not None:
            return False
        return self.match(stored, row, known=True) is None


class Withholder:
    """Replaces any text that names one of the other people who used the computer."""

    def __init__(self, others: Iterable[str], own: Iterable[str]) -> None:
        names = {fold(split_account(other)[0]) for other in others} - {""}
        mine = {fold(split_account(name)[0]) for name in own}
        # Short names are only matched as a whole word, so that "al" keeps "Visual" intact.
        # The subject's own names are taken out first when they contain another's
        # (alice's "basmith-pc" does not name a bob who is "asmith").
        self.rules = [
            (
                re.compile(
                    re.escape(n) if len(n) >= 4 else rf"(?<![^\W\d_]){re.escape(n)}(?![^\W\d_])"
                ),
                sorted((m for m in mine if n in m and n != m), key=len, reverse=True),
            )
            for n in sorted(names)
        ]

    def names_other(self, text: str) -> bool:
        for pattern, containing in self.rules:
            folded = fold(text)
            for name in containing:
                folded = folded.replace(name, "\0")
            if pattern.search(folded):
                return True
        return False

    def scrub(self, value: JSONValue) -> JSONValue:
        if isinstance(value, str):
            return WITHHELD_TEXT if self.names_other(value) else value
        if isinstance(value, list):
            return [self.scrub(item) for item in value]
        if isinstance(value, dict):
            return {key: self.scrub(item) for key, item in value.items()}
        return value


def is_user(value: Any) -> bool:
    return isinstance(value, str) and value.strip().casefold() not in NOBODY


def like_pattern(needle: str) -> str:
    """A LIKE pattern (escape character ``/``) that finds needle anywhere, ignoring case."""
    out = []
    for char in needle.lower():
        if char in "%_/":
            out.append("/" + char)
        elif char.isascii():
            out.append(char)
        elif not out or out[-1] != "%":
            # Databases lower non-ASCII letters differently, to more or fewer characters
            # (İ, ß, a decomposed é): any run of them matches anything; Python decides.
            out.append("%")
    return "%" + "".join(out) + "%"


def json_of(value: Any) -> Any:
    """A JSON column's value: parsed by the driver (PostgreSQL) or stored as text (SQLite)."""
    if isinstance(value, str | bytes):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def scalar(value: Any) -> JSONValue:
    return value if isinstance(value, str | int | float | bool) else None


def texts(value: Any) -> list[str]:
    items = value if isinstance(value, list) else []
    return [v.strip() for v in items if isinstance(v, str) and v.strip()]


def entries(items: Any, keys: Mapping[str, str]) -> list[dict[str, JSONValue]]:
    """Chosen properties of each object in a JSON list, under human-readable names."""
    objects = items if isinstance(items, list) else []
    return [
        {label: scalar(o.get(key)) for key, label in keys.items()}
        for o in objects
        if isinstance(o, dict)
    ]


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
    try:
        return ipaddress.ip_interface(value.strip()).ip if isinstance(value, str) else None
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


def software(documents: Iterable[Any]) -> list[JSONValue]:
    """Installed programs; install locations and uninstall commands are left out."""
    return [item for doc in documents for item in entries(json_of(doc), SOFTWARE_KEYS)]


# Hardware, from wmi_detail.  The Windows agent stores WMI classes (cpu, comp_sys, bios,
# network_config, ...) as lists of objects, each a list of property dictionaries; the
# Linux and macOS agents store plain values (cpus, make_model, serialnumber, local_ips).
# Only the properties named here are read: Win32_ComputerSystem and Win32_OperatingSystem
# also hold the console user, the registered owner and the organisation.


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
