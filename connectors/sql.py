"""``sql``: named, parameterised SELECT queries against any SQLAlchemy database.

Each query binds one identifier kind as a named parameter (``:email`` by
default) and every row it returns becomes a record.  SQLite files are opened
read-only; for other databases, give the connector a read-only account.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from pydantic import BaseModel, Field, field_validator, model_validator
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from sarbot.config import Section
from sarbot.connector import Identity, Record, jsonable
from sarbot.secretref import MaybeSecretStr


class Query(Section):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    category: str = Field(min_length=1)
    sql: str
    identifier: str = Field(default="email", pattern=r"^[a-z][a-z0-9_]{0,30}$")

    @field_validator("sql")
    @classmethod
    def _select_only(cls, value: str) -> str:
        first = value.lstrip().split(None, 1)[0].lower() if value.strip() else ""
        if first not in {"select", "with"}:
            raise ValueError("must be a SELECT (or WITH ... SELECT) statement")
        return value

    @model_validator(mode="after")
    def _binds_identifier(self) -> Query:
        binds = set(text(self.sql).compile().params)
        if binds != {self.identifier}:
            raise ValueError(
                f"query '{self.name}' must bind exactly :{self.identifier} (found: "
                f"{', '.join(sorted(binds)) or 'no parameters'})"
            )
        return self


class SqlSettings(Section):
    url: MaybeSecretStr
    queries: tuple[Query, ...] = Field(min_length=1)


class SqlConnector:
    """Runs the configured queries once per identifier value."""

    Settings: ClassVar[type[BaseModel]] = SqlSettings

    def __init__(self, name: str, settings: SqlSettings) -> None:
        self.name = name
        self.settings = settings
        self.engine = _read_only_engine(settings.url)

    def collect(self, identity: Identity) -> Iterator[Record]:
        with self.engine.connect() as connection:
            for query in self.settings.queries:
                for value in sorted(identity.values(query.identifier)):
                    rows = connection.execute(text(query.sql), {query.identifier: value})
                    for row in rows.mappings():
                        yield Record(
                            category=query.category,
                            fields={str(key): jsonable(val) for key, val in row.items()},
                            matched_on=f"{query.identifier} {value} (query '{query.name}')",
                        )

    def close(self) -> None:
        self.engine.dispose()


def _read_only_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        parsed = parsed.set(database=f"file:{parsed.database}", query={"mode": "ro", "uri": "true"})
    return create_engine(parsed, hide_parameters=True, pool_pre_ping=True)
