"""``sql``: named, parameterised SELECT queries against any SQLAlchemy database.

Each query consumes one identifier kind, bound as the named parameter of the
same name (``:email``, ``:username``), and runs once per identifier of that
kind.  Databases compare loosely (MySQL's ``*_ci`` collations take ü for u and
ß for ss), so every row is checked again in Python: its ``verify`` column must
be the identifier exactly (an address once normalised; a login in this
connector's namespace, ``sql:NAME``).  Every row that passes becomes a record.
A query may name columns whose values are further identifiers of the same
person (``yields``); the connector's ``trust`` says who wrote them (default:
whoever typed them, so they are not followed).  The
database is opened read-only (see ``connectors.readonly``); give the connector
a read-only account too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy import RowMapping, text

from connectors.readonly import read_only_engine
from sarbot.connector import (
    EMAIL,
    ConnectorError,
    Identifier,
    Identity,
    MaybeSecretStr,
    Record,
    Section,
    Trust,
    fold,
    jsonable,
    same_address,
    written_forms,
)

KIND = r"^[a-z][a-z0-9_]{0,30}$"


class Query(Section):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    category: str = Field(min_length=1)
    sql: str
    consumes: str = Field(default="email", pattern=KIND)
    key: str | None = None
    verify: str = Field(min_length=1)
    yields: Mapping[str, str] = Field(default_factory=dict)

    @field_validator("sql")
    @classmethod
    def _select_only(cls, value: str) -> str:
        first = value.lstrip().split(None, 1)[0].lower() if value.strip() else ""
        if first not in {"select", "with"}:
            raise ValueError("must be a SELECT (or WITH ... SELECT) statement")
        return value

    @field_validator("yields")
    @classmethod
    def _kinds(cls, value: Mapping[str, str]) -> Mapping[str, str]:
        bad = [kind for kind in value if not re.match(KIND, kind)]
        if bad:
            raise ValueError(f"not an identifier kind: {', '.join(bad)}")
        return value

    @model_validator(mode="after")
    def _binds_identifier(self) -> Query:
        binds = set(text(self.sql).compile().params)
        if binds != {self.consumes}:
            raise ValueError(
                f"query '{self.name}' must bind exactly :{self.consumes} (found: "
                f"{', '.join(sorted(binds)) or 'no parameters'})"
            )
        return self


class SqlSettings(Section):
    url: MaybeSecretStr
    queries: tuple[Query, ...] = Field(min_length=1)
    trust: Literal["controller", "self_asserted"] = "self_asserted"


class SqlConnector:
    """Runs the configured queries once per identifier of the kind each consumes."""

    Settings: ClassVar[type[BaseModel]] = SqlSettings

    def __init__(self, name: str, settings: SqlSettings) -> None:
        self.name = name
        self.settings = settings
        self.engine = read_only_engine(settings.url)
        self.namespace = f"sql:{name}"
        self.namespace_trust = Trust(settings.trust)

    def collect(self, identity: Identity) -> Iterator[Record]:
        with self.engine.connect() as connection:
            for query in self.settings.queries:
                for identifier in identity.of_kind(query.consumes):
                    if identifier.kind != EMAIL and not identifier.covers(self.namespace):
                        continue  # a login of another directory: not a name in this database
                    forms = (
                        written_forms(identifier.value)
                        if identifier.kind == EMAIL
                        else [identifier.value]
                    )
                    for value in forms:
                        rows = connection.execute(text(query.sql), {query.consumes: value})
                        for row in rows.mappings():
                            if self._verified(query, identifier, row):
                                yield self._record(query, identifier, row)

    def _verified(self, query: Query, identifier: Identifier, row: RowMapping) -> bool:
        """The row's ``verify`` column is the identifier, exactly, whatever the collation."""
        if query.verify not in row:
            raise ConnectorError(
                f"sql '{self.name}': query '{query.name}' returns no column '{query.verify}' "
                "(its verify setting) to check each row against"
            )
        value = row[query.verify]
        if identifier.kind == EMAIL:
            return same_address(value, identifier.value)
        if identifier.kind == "username":
            return Identity("", (identifier,)).account(value, self.namespace) is not None
        return isinstance(value, str) and fold(value) == fold(identifier.value)

    def _record(self, query: Query, found_by: Identifier, row: RowMapping) -> Record:
        fields = {str(key): jsonable(value) for key, value in row.items()}
        item = row.get(query.key) if query.key else None
        key = f"{query.name}:{item}" if item is not None else ""
        yields = tuple(
            Identifier(
                kind,
                str(row[column]),
                f"{self.name}: query '{query.name}', column {column}",
                EMAIL if kind == EMAIL else self.namespace,
                self.namespace_trust,
            )
            for kind, column in query.yields.items()
            if row.get(column) not in (None, "")
        )
        location = f"query '{query.name}'" + (f", {query.key} {item}" if key else "")
        return Record(query.category, fields, found_by, location, yields, key=key)

    def check(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def close(self) -> None:
        self.engine.dispose()
