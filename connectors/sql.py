"""``sql``: named, parameterised SELECT queries against any SQLAlchemy database.

Each query consumes one identifier kind, bound as the named parameter of the
same name (``:email``, ``:username``), and runs once per identifier of that
kind.  Every row becomes a record.  A query may name columns whose values are
further identifiers of the same person (``yields``), which sarbot follows
when the kind is a strong one.  The database is opened read-only
(see ``connectors.readonly``); give the connector a read-only account too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import ClassVar

from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy import RowMapping, text

from connectors.readonly import read_only_engine
from sarbot.config import Section
from sarbot.connector import Identifier, Identity, Record, jsonable
from sarbot.secretref import MaybeSecretStr

KIND = r"^[a-z][a-z0-9_]{0,30}$"


class Query(Section):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    category: str = Field(min_length=1)
    sql: str
    consumes: str = Field(default="email", pattern=KIND)
    key: str | None = None
    verify: str | None = None
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


class SqlConnector:
    """Runs the configured queries once per identifier of the kind each consumes."""

    Settings: ClassVar[type[BaseModel]] = SqlSettings

    def __init__(self, name: str, settings: SqlSettings) -> None:
        self.name = name
        self.settings = settings
        self.engine = read_only_engine(settings.url)

    def collect(self, identity: Identity) -> Iterator[Record]:
        with self.engine.connect() as connection:
            for query in self.settings.queries:
                for identifier in identity.of_kind(query.consumes):
                    rows = connection.execute(text(query.sql), {query.consumes: identifier.value})
                    for row in rows.mappings():
                        if _verified(query, identifier, row):
                            yield self._record(query, identifier, row)

    def _record(self, query: Query, found_by: Identifier, row: RowMapping) -> Record:
        fields = {str(key): jsonable(value) for key, value in row.items()}
        item = row.get(query.key) if query.key else None
        key = f"{query.name}:{item}" if item is not None else ""
        yields = tuple(
            Identifier(
                kind, str(row[column]), f"{self.name}: query '{query.name}', column {column}"
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


def _verified(query: Query, identifier: Identifier, row: RowMapping) -> bool:
    """Databases compare loosely (MySQL collations ignore accents); re-check exactly."""
    if query.verify is None:
        return True
    value = row.get(query.verify)
    return isinstance(value, str) and value.strip().casefold() == identifier.value.casefold()
