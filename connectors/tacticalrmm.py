"""``tacticalrmm``: the computers a person used, read from a Tactical RMM database.

Tactical RMM keeps, for every monitored computer (an *agent*), the user logged in
now (``logged_in_username``) and the last user who logged in
(``last_logged_in_user``), written ``user``, ``DOMAIN\\user`` or ``user@domain``.
A computer is linked to the person when one of those names is one of their
usernames (the account part compared exactly, ignoring case; when both sides name
a domain, the domains must agree too) or, written ``user@domain``, one of their
e-mail addresses.

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
from sarbot.connector import Identifier, Identity, JSONValue, Record, jsonable
from sarbot.secretref import MaybeSecretStr

CATEGORY = "Monitored computer"
WITHHELD_USER = "[another person: withheld]"
WITHHELD_TEXT = "[withheld: it names another person]"
WITHHELD_DEVICE = "[withheld: a network or personal path]"
OTHERS_NOTE = "Information about other people who used this computer was withheld."
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
        subject = Subject.of(identity)
        if not subject.needles:
            return
        with self._connect() as connection:
            for agent_pk in self._candidates(connection, subject):
                row = connection.execute(DETAILS.where(AGENTS.c.id == agent_pk)).mappings().first()
                found_by = subject.linked(row) if row is not None else None
                if row is not None and found_by is not None:
                    yield self._record(connection, row, subject, found_by)

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
        query: Select[Any] = select(AGENTS.c.id, *users).where(
            or_(
                *(
                    func.lower(user).like(like_pattern(needle), escape="/")
                    for needle in sorted(subject.needles)
                    for user in users
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
        found_by: Identifier,
    ) -> Record:
        users = [row[name] for name in USER_FIELDS]
        others = [user for user in users if subject.other(user)]
        own = [user for user in users if subject.match(user)] + subject.names()
        withhold = Withholder(others, own)
        fields = {k: withhold.scrub(v) for k, v in self._machine(connection, row).items()}
        for name, label in USER_FIELDS.items():
            value = row[name]
            shown = WITHHELD_USER if subject.other(value) else value
            fields[label] = shown if is_user(value) else None
        hostname = fields["Hostname"]
        host = hostname if isinstance(hostname, str) and hostname != WITHHELD_TEXT else None
        where = f"tacticalrmm '{self.name}': agents_agent id {row['id']}"
        yields = [Identifier("hostname", host, f"{where}, hostname")] if host else []
        addresses = [(fields["Public IP address"], "public_ip")]
        addresses += [
            (a, "wmi_detail, local IP addresses") for a in texts(fields["Local IP addresses"])
        ]
        for value, source in addresses:
            ip = ip_of(value)
            if ip and all(y.value != str(ip) for y in yields):
                yields.append(Identifier("ip", str(ip), f"{where}, {source}"))
        return Record(
            category=CATEGORY,
            fields=fields,
            found_by=found_by,
            location=f"agents_agent id {row['id']} ({host or 'hostname withheld'})",
            yields=tuple(yields),
            notes=(OTHERS_NOTE,) if others else (),
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
class Account:
    """A Windows or Unix user name: the account (case-folded) and its domain, if named."""

    name: str
    domain: str | None

    @classmethod
    def parse(cls, value: str) -> Account:
        name, domain = split_user(value)
        domain = domain.casefold()
        return cls(name.casefold(), None if domain in {"", "."} else domain)

    def same(self, other: Account) -> bool:
        if not self.name or self.name != other.name:
            return False
        if self.domain is None or other.domain is None:
            return True
        # A NetBIOS domain (CORP) agrees with the DNS domain it names (corp.example).
        mine, theirs = self.domain, other.domain
        return mine == theirs or mine.split(".")[0] == theirs or theirs.split(".")[0] == mine


@dataclass(frozen=True)
class Subject:
    """The identifiers of this round that can name a Tactical RMM user."""

    usernames: tuple[tuple[Identifier, Account], ...]
    emails: tuple[Identifier, ...]
    needles: frozenset[str]
    known_accounts: tuple[Account, ...] = ()
    known_emails: frozenset[str] = frozenset()

    @classmethod
    def of(cls, identity: Identity) -> Subject:
        usernames = tuple(
            (i, account)
            for i in identity.of_kind("username")
            if (account := Account.parse(i.value)).name
        )
        emails = tuple(i for i in identity.of_kind("email") if "@" in i.value)
        # SQL's lower() keeps the length of what it lowers; casefold() may not (ß: ss).
        needles = {split_user(i.value)[0].lower() for i, _ in usernames}
        needles |= {i.value.strip().lower() for i in emails}
        # Names of the person found in earlier rounds are theirs too, never "another person".
        known = [i for i in identity.known if i.kind == "username"]
        accounts = tuple(a for i in known if (a := Account.parse(i.value)).name)
        known_emails = frozenset(
            i.value.strip().casefold() for i in identity.known if i.kind == "email"
        )
        return cls(usernames, emails, frozenset(needles), accounts, known_emails)

    def match(self, stored: Any) -> Identifier | None:
        if not is_user(stored):
            return None
        account = Account.parse(stored)
        for identifier, mine in self.usernames:
            if mine.same(account):
                return identifier
        folded = stored.strip().casefold()
        return next((i for i in self.emails if i.value.strip().casefold() == folded), None)

    def linked(self, row: RowMapping) -> Identifier | None:
        """The identifier that links the agent to the subject, or None."""
        return next((i for name in USER_FIELDS if (i := self.match(row[name]))), None)

    def names(self) -> list[str]:
        return [account.name for _, account in self.usernames] + [
            a.name for a in self.known_accounts
        ]

    def other(self, stored: Any) -> bool:
        """Whether a user field names somebody else than the person (in any round)."""
        if not is_user(stored) or self.match(stored) is not None:
            return False
        account = Account.parse(stored)
        if any(mine.same(account) for mine in self.known_accounts):
            return False
        return stored.strip().casefold() not in self.known_emails


class Withholder:
    """Replaces any text that names one of the other people who used the computer."""

    def __init__(self, others: Iterable[str], own: Iterable[str]) -> None:
        names = {Account.parse(other).name for other in others} - {""}
        mine = {Account.parse(name).name for name in own}
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
            folded = text.casefold()
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


def split_user(value: str) -> tuple[str, str]:
    """``DOMAIN\\user`` or ``user@domain`` or ``user``: the user and the domain, as written."""
    text = value.strip()
    if "\\" in text:
        domain, _, name = text.rpartition("\\")
    else:
        name, _, domain = text.rpartition("@") if "@" in text else (text, "", "")
    return name.strip(), domain.strip()


def is_user(value: Any) -> bool:
    return isinstance(value, str) and value.strip().casefold() not in NOBODY


def like_pattern(needle: str) -> str:
    """A LIKE pattern (escape character ``/``) that finds needle anywhere, ignoring case."""
    out = []
    for char in needle.lower():
        if char in "%_/":
            out.append("/" + char)
        else:  # lower() of non-ASCII letters differs between databases: match any character
            out.append(char if char.isascii() else "_")
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
