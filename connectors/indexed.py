"""Lookups an index can answer, for the connectors that read SQL stores, and the indexes
they need.

A connector asks the database for the ways an identifier may be *written* (its
spellings), compared in a form an index serves, and then checks every row again
in Python, exactly (``Identity.address``, ``Identity.account``): the database only
narrows.  So the database must never miss a row the exact check accepts:

* on MySQL/MariaDB, a column with a case-insensitive (``_ci``) collation is compared
  with ``=``: the collation ignores case (and, in the Unicode collations WordPress
  uses, accents), a superset of the exact match, and the column's index serves it;
* elsewhere (PostgreSQL, SQLite, a case-sensitive collation), ``lower(column)`` is
  compared with the spellings in lower case, which an index on ``lower(column)``
  serves;
* a spelling with a letter outside ASCII is also looked for with ``LIKE``, its
  non-ASCII letters left to match anything, because databases lower those letters
  differently (or, like SQLite, not at all): such a lookup reads the whole column.

``missing`` names the indexes a connector needs that the database lacks, for
``check()`` to warn about.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, bindparam, func, or_, text

from sarbot.connector import EMAIL, Identifier, fold, split_account, written_forms

ESCAPE = "/"


def address_spellings(address: str) -> list[str]:
    """How a normalised address may be stored: ASCII and Unicode domain, with and without
    the root's trailing dot (``normalize_address`` takes ``alice@example.test.`` too)."""
    forms = written_forms(address)
    return list(dict.fromkeys([*forms, *(f + "." for f in forms)]))


def account_spellings(identifier: Identifier) -> list[str]:
    """How an account that ``Identity.account`` takes for this login may be stored: its user
    name alone and with each domain it may be written with (its own, the realm's Windows
    domains), as ``DOMAIN\\user`` or ``user@domain``, the domain with or without a trailing dot.
    """
    name, domain = split_account(identifier.value)
    if not name:
        return []
    name = fold(name)
    domains = set(identifier.domains())
    if domain:
        domains.add(fold(domain))
    spellings = [name]
    for each in sorted(domains):
        for written in (each, each + "."):
            spellings += [f"{written}\\{name}", f"{name}@{written}"]
    return spellings


def spellings_of(identifier: Identifier) -> list[str]:
    """An email address's or a login's stored spellings; none for other kinds."""
    if not identifier.value.strip():
        return []
    if identifier.kind == EMAIL:
        return address_spellings(identifier.value)
    if identifier.kind == "username":
        return account_spellings(identifier)
    return []


@dataclass(frozen=True)
class Collation:
    """How a column compares: ignoring case (``_ci``), and ignoring accents as well."""

    ignores_case: bool = False
    ignores_accents: bool = False

    @classmethod
    def named(cls, name: str | None) -> Collation:
        collation = (name or "").lower()
        ignores_case = collation.endswith("_ci")
        unicode = any(part in collation for part in ("unicode", "uca", "0900"))
        return cls(ignores_case, ignores_case and unicode)


def column_collations(connection: Connection, table: str) -> dict[str, Collation]:
    """Each text column's collation on MySQL/MariaDB (by lower-case column name); empty
    elsewhere, where text compares case-sensitively."""
    if connection.dialect.name not in ("mysql", "mariadb"):
        return {}
    rows = connection.execute(
        text(
            "SELECT COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :table"
        ),
        {"table": table},
    )
    return {str(name).lower(): Collation.named(collation) for name, collation in rows}


@dataclass(frozen=True)
class Spelled:
    """One lookup's spellings, bound to a clause built once per shape: ``values`` for an
    ``IN`` an index serves, ``patterns`` for the LIKEs that letters outside ASCII need."""

    values: tuple[str, ...]
    patterns: tuple[str, ...]

    @classmethod
    def of(cls, spellings: Iterable[str], collation: Collation) -> Spelled:
        values = list(dict.fromkeys(s for s in spellings if s.strip()))
        loose = [v for v in values if not v.isascii()]
        if collation.ignores_case:
            loose = [] if collation.ignores_accents else loose
        else:
            values = list(dict.fromkeys(v.lower() for v in values))
        return cls(tuple(values), tuple(dict.fromkeys(like_whole(v) for v in loose)))

    @property
    def shape(self) -> int:
        """What the clause's shape depends on: the number of LIKE patterns."""
        return len(self.patterns)

    def params(self, name: str) -> dict[str, Any]:
        bound: dict[str, Any] = {name: list(self.values)}
        return bound | {f"{name}_like{n}": p for n, p in enumerate(self.patterns)}


def any_spelling(
    column: ColumnElement[Any], collation: Collation, name: str, shape: int
) -> ColumnElement[bool]:
    """Rows whose column holds one of the spellings bound as ``name`` (``Spelled.params``),
    in a form an index serves; a superset of the exact match, which the caller checks on
    every row.  Built once per shape and reused: building a statement costs more than
    running it."""
    target = column if collation.ignores_case else func.lower(column)
    clauses = [target.in_(bindparam(name, expanding=True))]
    clauses += [
        func.lower(column).like(bindparam(f"{name}_like{n}"), escape=ESCAPE) for n in range(shape)
    ]
    return or_(*clauses)


def like_whole(value: str) -> str:
    """A LIKE pattern (escape ``/``) for the whole value in lower case, each run of non-ASCII
    letters matching anything: Python decides about those."""
    out: list[str] = []
    for char in value.lower():
        if char in "%_" + ESCAPE:
            out.append(ESCAPE + char)
        elif char.isascii():
            out.append(char)
        elif not out or out[-1] != "%":
            out.append("%")
    return "".join(out)


def sort_key(key: ColumnElement[Any]) -> ColumnElement[Any]:
    """The key to sort a page by, as an expression no index holds (``id + 0``).

    Ordered by the bare primary key with a LIMIT, PostgreSQL and MariaDB may walk the
    primary key in order, testing each row, to stop as soon as the page is full; a person
    has fewer rows than a page, so that walk reads the whole table.  Sorting by an
    expression makes them find the rows by the lookup's index and sort those few."""
    return key + 0


# The indexes a connector needs


@dataclass(frozen=True)
class Needed:
    """An index a lookup needs: on ``column`` of ``table``, as its first key.

    ``text`` columns are compared ignoring case: on MySQL/MariaDB they need a ``_ci``
    collation and a plain index; elsewhere an index on ``lower(column)``.
    """

    table: str
    column: str
    text: bool
    why: str

    def statement(self, dialect: str) -> str:
        name = f"sarbot_{self.table}_{self.column}".lower()
        if self.text and dialect not in ("mysql", "mariadb"):
            return f"CREATE INDEX {name} ON {self.table} (lower({self.column}))"
        return f"CREATE INDEX {name} ON {self.table} ({self.column})"


def missing(connection: Connection, needed: Sequence[Needed]) -> list[str]:
    """A warning for each needed index the database lacks (and each text column that
    compares case-sensitively on MySQL/MariaDB, which no plain index can serve)."""
    dialect = connection.dialect.name
    warnings: list[str] = []
    collations: dict[str, dict[str, Collation]] = {}
    keys: dict[str, set[str]] = {}
    for need in needed:
        if need.table not in keys:
            keys[need.table] = _first_keys(connection, need.table)
            collations[need.table] = column_collations(connection, need.table)
        wanted = need.column.lower()
        if need.text and dialect not in ("mysql", "mariadb"):
            wanted = f"lower({wanted})"
        elif need.text and not collations[need.table].get(wanted, Collation()).ignores_case:
            warnings.append(
                f"{need.table}.{need.column} compares case-sensitively (its collation is not "
                f"_ci): {need.why} read the whole table"
            )
            continue
        if wanted not in keys[need.table]:
            warnings.append(
                f"no index on {wanted} of {need.table}: {need.why} read the whole table; "
                f"create it: {need.statement(dialect)}"
            )
    return warnings


def _first_keys(connection: Connection, table: str) -> set[str]:
    """The first key of every index of the table, as ``column`` or ``lower(column)``."""
    dialect = connection.dialect.name
    if dialect in ("mysql", "mariadb"):
        rows = connection.execute(
            text(
                "SELECT COLUMN_NAME FROM information_schema.STATISTICS "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :table AND SEQ_IN_INDEX = 1"
            ),
            {"table": table},
        )
        return {_key(str(name)) for (name,) in rows if name is not None}
    if dialect == "postgresql":
        rows = connection.execute(
            text(
                "SELECT pg_get_indexdef(i.indexrelid, 1, true) FROM pg_index i "
                "WHERE i.indrelid = to_regclass(:table) AND i.indpred IS NULL"
            ),
            {"table": table},
        )
        return {_key(str(key)) for (key,) in rows}
    if dialect == "sqlite":
        rows = connection.execute(
            text("SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = :table"),
            {"table": table},
        )
        found = set()
        for (sql,) in rows:
            inside = re.search(r"\((.*)\)", str(sql or ""), re.S)
            if inside and " where " not in str(sql).lower():
                found.add(_key(_first_part(inside.group(1))))
        auto = connection.exec_driver_sql(f'PRAGMA index_list("{table}")').all()
        for row in auto:
            if str(row[3]) != "c":  # indexes of PRIMARY KEY and UNIQUE constraints
                info = connection.exec_driver_sql(f'PRAGMA index_info("{row[1]}")').all()
                if info and info[0][2] is not None:
                    found.add(_key(str(info[0][2])))
        return found
    return set()


def _first_part(keys: str) -> str:
    depth = 0
    for position, char in enumerate(keys):
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            return keys[:position]
    return keys


def _key(expression: str) -> str:
    """``lower((logged_in_username)::text)``, ``"user_id" ASC``: ``lower(logged_in_username)``,
    ``user_id``."""
    key = re.sub(
        r"::\w+(\s+varying)?|\s+(asc|desc)\b|\s+collate\s+\S+|[\"`\s]", "", expression, flags=re.I
    )
    key = key.lower()
    lowered = re.fullmatch(r"lower\(+([a-z0-9_]+)\)+", key)
    if lowered:
        return f"lower({lowered.group(1)})"
    return key.strip("()")
