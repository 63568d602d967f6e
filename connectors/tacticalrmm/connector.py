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

from collections.abc import Iterator, Sequence
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, Field
from sqlalchemy import Connection, Select, bindparam, column, or_, select, table

from connectors.indexed import (
    Collation,
    Needed,
    Spelled,
    any_spelling,
    missing,
    sort_key,
)
from connectors.readonly import read_only_engine
from connectors.statements import Prepared
from connectors.tacticalrmm.inventory import (
    boot_time,
    cpus,
    disks,
    ip_of,
    json_of,
    local_ips,
    make_model,
    serial_number,
    software,
    texts,
    timestamp,
)
from connectors.tacticalrmm.people import (
    USER_FIELDS,
    WITHHELD_TEXT,
    AgentRow,
    Link,
    Subject,
    Whose,
    is_user,
)
from sarbot.connector import (
    Identifier,
    Identity,
    JSONValue,
    MaybeSecretStr,
    Record,
    Section,
    Trust,
    jsonable,
)

CATEGORY = "Monitored computer"
PAGE = 100
"""Candidate agents read whole this many at a time."""
WITHHELD_USER = "[another person: withheld]"
OTHERS_NOTE = "Information about other people who used this computer was withheld."
NOW_WITHHELD = "[withheld: the computer may be used by someone else now]"
LAST_USER_NOTE = (
    "You were the last person to log in to this computer, not the one logged in now: "
    "its current public IP address and the time it was last seen were withheld."
)

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


SOFTWARE_OF = (
    select(SOFTWARE.c.agent_id, SOFTWARE.c.software)
    .where(SOFTWARE.c.agent_id.in_(bindparam("agents", expanding=True)))
    .order_by(SOFTWARE.c.id)
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
        self.built: dict[tuple[int, bool], Prepared] = {}
        self.software_of = Prepared(SOFTWARE_OF)

    def needed(self) -> list[Needed]:
        """The indexes the lookups need (docs/connectors/tacticalrmm.md)."""
        needs = [Needed("agents_agent", name, True, "lookups by user name") for name in USER_FIELDS]
        if self.settings.include_software:
            needs.append(
                Needed("software_installedsoftware", "agent_id", False, "software lookups")
            )
        return needs

    def check(self) -> list[str]:
        """Run the connector's queries with LIMIT 0: the tables and columns exist; a warning
        for each index the lookups need that is missing."""
        with self.engine.connect() as connection:
            connection.execute(DETAILS.limit(0)).all()
            if self.settings.include_software:
                connection.execute(select(*SOFTWARE.c).limit(0)).all()
            return missing(connection, self.needed())

    def collect(self, identity: Identity) -> Iterator[Record]:
        subject = Subject.of(identity, self.name)
        if not subject.spellings:
            return
        with self.engine.connect() as connection:
            for page in self._candidates(connection, subject):
                linked = [(row, link) for row in page if (link := subject.linked(row))]
                programs = self._software(connection, [row["id"] for row, _ in linked])
                for row, link in linked:
                    yield self._record(row, subject, link, programs.get(row["id"], []))

    def close(self) -> None:
        self.engine.dispose()

    def _candidates(self, connection: Connection, subject: Subject) -> Iterator[Sequence[AgentRow]]:
        """Agents whose user fields hold one of the subject's spellings (found by index), whole,
        a page at a time (keyset by id, so memory stays flat); the caller links them exactly."""
        spelled = Spelled.of(subject.spellings, Collation())
        params = spelled.params("spellings")
        after = None
        while True:
            query = self._statement(spelled.shape, first=after is None)
            bound = params if after is None else params | {"after": after}
            page = query.mappings(connection, bound)
            if page:
                yield page
            if len(page) < PAGE:
                return
            after = page[-1]["id"]

    def _statement(self, shape: int, *, first: bool) -> Prepared:
        """The page query, built and compiled once for each shape of the lookup: building a
        statement costs more than running it."""
        key = (shape, first)
        if key not in self.built:
            query: Select[Any] = DETAILS.where(
                or_(
                    *(
                        any_spelling(AGENTS.c[n], Collation(), "spellings", shape)
                        for n in USER_FIELDS
                    )
                )
            )
            if self.settings.clients:
                sites = select(SITES.c.id).join(CLIENTS, CLIENTS.c.id == SITES.c.client_id)
                query = query.where(
                    AGENTS.c.site_id.in_(sites.where(CLIENTS.c.name.in_(self.settings.clients)))
                )
            if not first:
                query = query.where(AGENTS.c.id > bindparam("after"))
            query = query.order_by(sort_key(AGENTS.c.id)).limit(PAGE)
            self.built[key] = Prepared(query)
        return self.built[key]

    def _software(self, connection: Connection, agents: list[int]) -> dict[int, list[Any]]:
        """The installed-software documents of these agents, in one query."""
        if not agents or not self.settings.include_software:
            return {}
        found: dict[int, list[Any]] = {}
        for row in self.software_of.mappings(connection, {"agents": agents}):
            found.setdefault(row["agent_id"], []).append(row["software"])
        return found

    def _record(self, row: AgentRow, subject: Subject, link: Link, programs: list[Any]) -> Record:
        users = {name: row[name] for name in USER_FIELDS}
        whose = {name: subject.whose(value, row) for name, value in users.items()}
        others = [users[name] for name, who in whose.items() if who is Whose.OTHER]
        own = [users[name] for name, who in whose.items() if who is Whose.SUBJECT]
        withhold = subject.withholder(others, own)
        machine, gathered = self._machine(row, programs)
        fields = withhold.scrub_fields(machine, gathered)
        for name, label in USER_FIELDS.items():
            value = users[name]
            shown = WITHHELD_USER if whose[name] is Whose.OTHER else value
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
        public = ip_of(fields["Public IP address"])
        addresses = [(str(public), "public_ip")] if public else []
        # The local addresses are written as local_ips wrote them, parsed and in canonical
        # form; those still shown (not withheld) are handed on without parsing them again.
        written = set(texts(machine["Local IP addresses"]))
        addresses += [
            (a, "wmi_detail, local IP addresses")
            for a in texts(fields["Local IP addresses"])
            if a in written
        ]
        for ip, source in addresses:
            if all(y.value != ip for y in yields):
                yields.append(Identifier("ip", ip, f"{where}, {source}", "ip", Trust.CONTROLLER))
        return Record(
            category=CATEGORY,
            fields=fields,
            found_by=link.identifier,
            location=f"agents_agent id {row['id']} ({host or 'hostname withheld'})",
            yields=tuple(yields),
            notes=tuple(notes),
            key=f"agent:{row['agent_id'] or row['id']}",
        )

    def _machine(
        self, row: AgentRow, programs: list[Any]
    ) -> tuple[dict[str, JSONValue], dict[str, list[str]]]:
        """The computer's fields, and the texts of those whose builder gathered them."""
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
        gathered: dict[str, list[str]] = {}
        if self.settings.include_software:
            gathered["Installed software"] = []
            fields["Installed software"] = software(programs, gathered["Installed software"])
        return fields, gathered


# Hardware, from wmi_detail.  The Windows agent stores WMI classes (cpu, comp_sys, bios,
# network_config, ...) as lists of objects, each a list of property dictionaries; the
# Linux and macOS agents store plain values (cpus, make_model, serialnumber, local_ips).
# Only the properties named here are read: Win32_ComputerSystem and Win32_OperatingSystem
# also hold the console user, the registered owner and the organisation.
