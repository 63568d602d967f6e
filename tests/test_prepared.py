"""``connectors.statements.Prepared``: a statement compiled once and sent as SQL text gives what
SQLAlchemy's own execution of it gives, run after run, on a real SQLite database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Connection,
    String,
    TypeDecorator,
    bindparam,
    column,
    create_engine,
    literal,
    or_,
    select,
    table,
)
from sqlalchemy.exc import OperationalError

from connectors.indexed import sort_key
from connectors.statements import Paged, Prepared

NAMES = ["asmith", "ASmith", "bjones", "carol", "CAROL", "jürgen", "asmith@acme.test", "", "x%y"]
# Declared in lower case; the statements name the columns as WordPress does (``ID``).
PEOPLE = table("people", column("ID"), column("user_login"), column("client"))


class Upper(TypeDecorator[str]):
    """A type whose values the driver gets only after a bind processor has run."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else value.upper()


@pytest.fixture(scope="module")
def connection(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Connection]:
    path: Path = tmp_path_factory.mktemp("prepared") / "people.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as setup:
        setup.exec_driver_sql("CREATE TABLE people (id INTEGER PRIMARY KEY, user_login, client)")
        for n in range(1, 41):
            setup.exec_driver_sql(
                "INSERT INTO people (id, user_login, client) VALUES (?, ?, ?)",
                (n, NAMES[n % len(NAMES)], "ACME" if n % 3 else "OTHER"),
            )
    with engine.connect() as connection:
        yield connection
    engine.dispose()


LOOKUP = (
    select(PEOPLE)
    .where(
        or_(
            PEOPLE.c.user_login.in_(bindparam("spellings", expanding=True)),
            PEOPLE.c.user_login.like(bindparam("pattern")),
        ),
        PEOPLE.c.client.in_(["ACME", "OTHER"]),
        bindparam("after") < PEOPLE.c.ID,
    )
    .order_by(sort_key(PEOPLE.c.ID))
    .limit(7)
)
SHARED = Prepared(LOOKUP)  # one for every example: its expansions are kept between runs


@settings(max_examples=150, deadline=None)
@given(
    spellings=st.lists(st.sampled_from(NAMES), max_size=6),
    pattern=st.sampled_from(["%", "a%", "zz", "%@%"]),
    after=st.integers(0, 40),
)
def test_each_run_gives_what_sqlalchemy_gives(
    connection: Connection, spellings: list[str], pattern: str, after: int
) -> None:
    params: dict[str, Any] = {"spellings": spellings, "pattern": pattern, "after": after}
    expected = connection.execute(LOOKUP, params).all()
    assert SHARED.all(connection, params) == expected
    assert [dict(row) for row in SHARED.mappings(connection, params)] == [
        dict(row._mapping) for row in expected
    ]


def test_columns_are_named_as_the_statement_names_them(connection: Connection) -> None:
    """SQLite names an unlabelled column as its table declares it (``id``); the rows carry
    the statement's names, and a second page starts after the first's last row."""
    [row] = Prepared(select(PEOPLE).where(PEOPLE.c.ID == 1)).all(connection, {})
    assert row.ID == 1 and row[0] == 1 and row._fields == ("ID", "user_login", "client")
    paged = Paged.of(select(PEOPLE).where(PEOPLE.c.client == "ACME"), PEOPLE.c.ID, page=4)
    ids = [row.ID for row in paged.rows(connection, {})]
    assert ids == [n for n in range(1, 41) if n % 3]


def test_bind_processors_run_on_every_value(connection: Connection) -> None:
    """A parameter whose type needs a bind processor, alone, in a list, and written in the
    statement: ``carol`` finds only ``CAROL``."""
    carols = [(n,) for n in range(1, 41) if NAMES[n % len(NAMES)] == "CAROL"]
    login = PEOPLE.c.user_login
    query = select(PEOPLE.c.ID).where(
        or_(
            login == bindparam("one", type_=Upper()),
            login.in_(bindparam("many", type_=Upper(), expanding=True)),
        )
    )
    prepared = Prepared(query)
    for params in ({"one": "carol", "many": []}, {"one": "x", "many": ["y", "carol"]}):
        assert prepared.all(connection, params) == carols
        assert connection.execute(query, params).all() == carols
    written = select(PEOPLE.c.ID).where(login.in_([literal("carol", Upper())]))
    assert Prepared(written).all(connection, {}) == carols
    assert carols


def test_a_value_written_into_the_text_is_refused(connection: Connection) -> None:
    """Its first value would be kept in the statement for every later lookup."""
    query = select(PEOPLE.c.ID).where(
        PEOPLE.c.user_login == bindparam("login", literal_execute=True)
    )
    with pytest.raises(TypeError, match="cannot render 'login'"):
        Prepared(query).all(connection, {"login": "asmith"})


def test_a_missing_parameter_is_an_error_not_the_last_runs_value(connection: Connection) -> None:
    query = select(PEOPLE.c.ID).where(
        PEOPLE.c.user_login == bindparam("login"), PEOPLE.c.client == bindparam("client")
    )
    prepared = Prepared(query)
    assert prepared.all(connection, {"login": "carol", "client": "OTHER"})
    with pytest.raises(TypeError, match=r"takes \['client', 'login'\], not \['login'\]"):
        prepared.all(connection, {"login": "carol"})


def test_a_failing_statement_raises_sqlalchemys_error_without_its_values(
    connection: Connection,
) -> None:
    """Run on the driver's cursor, a failure is still SQLAlchemy's error (what the collect
    step and the tests expect), with the statement and without the value looked up; the
    connection stays usable."""
    missing = table("nobody", column("login"))
    query = select(missing.c.login).where(missing.c.login == bindparam("login"))
    with pytest.raises(OperationalError) as raised:
        Prepared(query).all(connection, {"login": "alice-secret-login"})
    assert "no such table: nobody" in str(raised.value)
    assert "alice-secret-login" not in str(raised.value)
    assert "parameters hidden" in str(raised.value)
    carols = select(PEOPLE.c.ID).where(PEOPLE.c.user_login == bindparam("login"))
    rows = Prepared(carols).all(connection, {"login": "carol"})
    assert [row.ID for row in rows] == [3, 12, 21, 30, 39]
