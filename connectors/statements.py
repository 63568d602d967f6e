"""Statements a lookup runs many times: compiled once and sent as SQL text (``Prepared``),
and a person's rows read a page at a time (``Paged``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnClause,
    Connection,
    CursorResult,
    Dialect,
    Row,
    RowMapping,
    Select,
    bindparam,
)
from sqlalchemy.sql.compiler import SQLCompiler

from connectors.indexed import sort_key

Processor = Callable[[Any], Any]
"""What the driver needs done to a value before it is bound (``TypeEngine.bind_processor``)."""


class Prepared:
    """A statement compiled once for the database it runs on, with each ``IN`` list it
    expands rendered once for each length, then sent as SQL text (``exec_driver_sql``).

    At a few milliseconds a lookup, compiling and expanding a statement on every run
    costs more than the database's answer.  Sent as text, SQLAlchemy still hides the
    parameters in its errors and notices a dropped connection, as for any statement.
    Each column is labelled with its key, so that every database names it as SQLAlchemy
    does (SQLite would name it as its table declares it: ``id`` for ``ID``)."""

    def __init__(self, query: Select[Any]) -> None:
        labelled = (column.label(key) for key, column in query.selected_columns.items())
        self.query = query.with_only_columns(*labelled, maintain_column_froms=True)
        self.compiled: dict[str, tuple[SQLCompiler, dict[str, Processor]]] = {}
        self.expanded: dict[tuple[str, tuple[int, ...]], _Expanded] = {}

    def all(self, connection: Connection, params: dict[str, Any]) -> Sequence[Row[Any]]:
        return self._execute(connection, params).all()

    def mappings(self, connection: Connection, params: dict[str, Any]) -> Sequence[RowMapping]:
        return self._execute(connection, params).mappings().all()

    def _execute(self, connection: Connection, params: dict[str, Any]) -> CursorResult[Any]:
        dialect = connection.dialect
        key = (dialect.name, tuple(len(v) for v in params.values() if isinstance(v, list)))
        if key not in self.expanded:
            if dialect.name not in self.compiled:
                self.compiled[dialect.name] = self._compile(dialect)
            compiled, processors = self.compiled[dialect.name]
            self.expanded[key] = _Expanded.of(compiled, processors, params)
        statement, bound = self.expanded[key].bind(params, dialect.positional)
        return connection.exec_driver_sql(statement, bound)

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

    def rows(self, connection: Connection, params: dict[str, Any]) -> Iterator[Row[Any]]:
        first = self.first.all(connection, params)
        yield from first[: self.page]
        if len(first) > self.page:
            after = first[self.page - 1]._mapping[self.key.name]
            yield from connection.execute(self.rest, params | {"paged_after": after})
