"""Statements a lookup runs many times: compiled once and run on the driver's cursor
(``Prepared``), and a person's rows read a page at a time (``Paged``)."""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnClause,
    Connection,
    Dialect,
    Select,
    bindparam,
    exc,
)
from sqlalchemy.sql.compiler import SQLCompiler

from connectors.indexed import sort_key

Processor = Callable[[Any], Any]
"""What the driver needs done to a value before it is bound (``TypeEngine.bind_processor``)."""


class Prepared:
    """A statement compiled once for the database it runs on, with each ``IN`` list it
    expands rendered once for each length, then run on the DBAPI cursor of the
    connection's pooled connection.

    At a few milliseconds a lookup, compiling and expanding a statement on every run
    costs more than the database's answer, and so does SQLAlchemy's execution of SQL
    text (its result's columns, read again from the cursor on every run).  The pool
    is still SQLAlchemy's, with its ping and its rollback when the connection is
    returned; a failure is raised as SQLAlchemy raises it (``DBAPIError.instance``),
    its parameters hidden, and when the server dropped the connection, it and the
    pool's others are discarded, so the next lookup takes a new one.  Each column is
    labelled with its key, so that every database names it as SQLAlchemy does (SQLite
    would name it as its table declares it: ``id`` for ``ID``); the rows come as named
    tuples (``all``) or dictionaries (``mappings``) of those names, so each key must be
    a Python name (``class`` or ``_x`` is refused when the statement is built)."""

    def __init__(self, query: Select[Any]) -> None:
        labelled = (column.label(key) for key, column in query.selected_columns.items())
        self.query = query.with_only_columns(*labelled, maintain_column_froms=True)
        self.names = tuple(self.query.selected_columns.keys())
        row: Any = namedtuple("Row", self.names)  # type: ignore[misc]  # fields known only here
        self.make_row: Callable[[Iterable[Any]], Any] = row._make
        self.compiled: dict[str, tuple[SQLCompiler, dict[str, Processor]]] = {}
        self.expanded: dict[tuple[str, tuple[int, ...]], _Expanded] = {}

    def all(self, connection: Connection, params: dict[str, Any]) -> list[Any]:
        """The rows, as named tuples: ``row.ID``, ``row[0]``."""
        return list(map(self.make_row, self._fetch(connection, params)))

    def mappings(self, connection: Connection, params: dict[str, Any]) -> list[dict[str, Any]]:
        """The rows, as dictionaries by column key."""
        names = self.names
        return [dict(zip(names, row, strict=True)) for row in self._fetch(connection, params)]

    def _fetch(self, connection: Connection, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        dialect = connection.dialect
        key = (dialect.name, tuple(len(v) for v in params.values() if isinstance(v, list)))
        if key not in self.expanded:
            if dialect.name not in self.compiled:
                self.compiled[dialect.name] = self._compile(dialect)
            compiled, processors = self.compiled[dialect.name]
            self.expanded[key] = _Expanded.of(compiled, processors, params)
        statement, bound = self.expanded[key].bind(params, dialect.positional)
        pooled = connection.connection
        cursor = pooled.cursor()
        try:
            cursor.execute(statement, bound)
            return list(cursor.fetchall())
        except dialect.loaded_dbapi.Error as error:
            dropped = dialect.is_disconnect(error, pooled.dbapi_connection, cursor)
            if dropped:
                # As SQLAlchemy does on a disconnect: this connection, and the pool's others,
                # which the server most likely dropped too (a restart) and which would each
                # fail a later attempt without being pinged.
                connection.invalidate(error)
                connection.engine.dispose()
            raise exc.DBAPIError.instance(
                statement,
                bound,
                error,
                dialect.loaded_dbapi.Error,
                hide_parameters=True,
                connection_invalidated=dropped,
                dialect=dialect,
            ) from error
        finally:
            cursor.close()

    def _compile(self, dialect: Dialect) -> tuple[SQLCompiler, dict[str, Processor]]:
        compiled = self.query.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        processors: dict[str, Processor] = {}
        for name, bind in compiled.binds.items():
            if bind.literal_execute:
                # Its value would be written into the SQL kept for every later lookup.
                raise TypeError(f"a Prepared statement cannot render {name!r} into its text")
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors[name] = process
        return compiled, processors


@dataclass(frozen=True)
class _Expanded:
    """One expansion of a compiled statement: its SQL and how to bind a lookup's values."""

    statement: str
    asked: frozenset[str]
    """The parameters each run binds: exactly these, so none is left from an earlier run."""
    constants: dict[str, Any]
    """The statement's own values (a LIMIT, a constant), bound with every run."""
    expansion: dict[str, list[str]]
    """Each list parameter's expanded names, one per item."""
    order: tuple[str, ...]
    """The parameters' order, for a positional paramstyle (SQLite's ``?``)."""
    processors: dict[str, Processor]
    """What the driver needs done to a parameter's value (or each of a list's) first."""

    @classmethod
    def of(
        cls, compiled: SQLCompiler, processors: dict[str, Processor], params: dict[str, Any]
    ) -> _Expanded:
        state = compiled.construct_expanded_state(params)
        expansion = {name: list(names) for name, names in state.parameter_expansion.items()}
        items_of = {item: name for name, items in expansion.items() for item in items}
        constants = {}  # the rest, a list written in the statement's IN included
        for name, value in state.parameters.items():
            original = items_of.get(name, name)
            if original not in params:
                process = processors.get(original)
                constants[name] = process(value) if process else value
        order = tuple(state.positiontup or ())
        return cls(state.statement, frozenset(params), constants, expansion, order, processors)

    def bind(self, params: dict[str, Any], positional: bool) -> tuple[str, Any]:
        if params.keys() != self.asked:
            raise TypeError(f"the statement takes {sorted(self.asked)}, not {sorted(params)}")
        bound = dict(self.constants)
        for name, value in params.items():
            process = self.processors.get(name)
            if name in self.expansion:
                items = [process(item) for item in value] if process else value
                bound.update(zip(self.expansion[name], items, strict=True))
            else:
                bound[name] = process(value) if process else value
        if positional:
            return self.statement, tuple(bound[name] for name in self.order)
        return self.statement, bound


@dataclass(frozen=True)
class Paged:
    """A query read in ``key`` order: the first page fetched whole (one round trip, which
    answers most lookups, its statement ``Prepared``), the rest, if any, streamed ``page``
    rows at a time, so memory stays flat however many rows one person has.  Both
    statements are built once."""

    first: Prepared
    rest: Select[Any]
    key: ColumnClause[Any]
    page: int

    @classmethod
    def of(cls, query: Select[Any], key: ColumnClause[Any], page: int = 500) -> Paged:
        first = query.order_by(sort_key(key)).limit(page + 1)
        rest = query.where(key > bindparam("paged_after")).order_by(sort_key(key))
        return cls(Prepared(first), rest.execution_options(yield_per=page), key, page)

    def rows(self, connection: Connection, params: dict[str, Any]) -> Iterator[Any]:
        """The rows in ``key`` order: named tuples, then SQLAlchemy's rows (both read by
        attribute and by position)."""
        first = self.first.all(connection, params)
        yield from first[: self.page]
        if len(first) > self.page:
            after = getattr(first[self.page - 1], self.key.name)
            yield from connection.execute(self.rest, params | {"paged_after": after})
