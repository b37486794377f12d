"""A statement compiled once to its SQL and its parameters' converters, for the writers to run
straight on the driver (sqlite3, asyncpg) without SQLAlchemy's execution machinery around it.

Built once per statement object (the writers keep them by it, weakly): a statement built once
with bind parameters and given its values per call (a `(statement, values)` step, the writes
every reply makes) is compiled once for good. What only SQLAlchemy's execution does right
(values it fills in itself: Python-side defaults, `onupdate`; expanding IN lists) gets no
plan, and goes through SQLAlchemy as before.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

_REQUIRED = object()  # a bind parameter with no value of its own


@dataclass(frozen=True, slots=True)
class Plan:
    """The SQL, and for each positional parameter (`?`, `$n`) the value's name (or a value of
    its own, for a literal in the statement) and the type's converter, if it has one."""

    sql: str
    slots: tuple[tuple[str, Any, Callable[[Any], Any] | None], ...]  # key, literal, converter
    # The columns of its rows (a SELECT's, a RETURNING clause's): each one's name and its
    # result converter, if it has one.
    columns: tuple[tuple[str, Callable[[Any], Any] | None], ...] = ()

    @classmethod
    def of(cls, statement: sa.Executable, dialect: sa.Dialect, *, returning: bool) -> Plan | None:
        """The plan, or None for what only SQLAlchemy's execution does right. `returning`:
        whether the caller reads a RETURNING clause's rows from the driver (else such a
        statement gets no plan)."""
        compiled = statement.compile(dialect=dialect)
        if (
            not isinstance(compiled, sa.sql.compiler.SQLCompiler)
            or compiled.positiontup is None
            or (compiled.effective_returning and not returning)
            or compiled.insert_prefetch
            or compiled.update_prefetch
        ):
            return None
        slots = []
        for name in compiled.positiontup:
            bind = compiled.binds[name]
            if bind.expanding or bind.callable is not None:
                return None
            converter = bind.type.dialect_impl(dialect).bind_processor(dialect)
            slots.append((bind.key, _REQUIRED if bind.required else bind.value, converter))
        columns = tuple(
            (column.keyname, _result_converter(column.type, dialect))
            for column in compiled._result_columns
        )
        return cls(compiled.string, tuple(slots), columns)

    @property
    def returns_rows(self) -> bool:
        return bool(self.columns)

    def parameters(self, values: dict[str, Any]) -> list[Any]:
        """The values in the order of the parameters, converted as SQLAlchemy would."""
        parameters = []
        for key, literal, converter in self.slots:
            value = values.get(key, literal)
            if value is _REQUIRED:
                raise sa.exc.ArgumentError(f"no value for the bind parameter {key!r}")
            parameters.append(value if converter is None else converter(value))
        return parameters

    def row(self, values: Sequence[Any]) -> dict[str, Any]:
        """A row by column name, converted as SQLAlchemy would convert it."""
        return dict(zip((name for name, _ in self.columns), self.values(values), strict=True))

    def values(self, values: Sequence[Any]) -> tuple[Any, ...]:
        """A row's values in order, converted as SQLAlchemy would convert them."""
        return tuple(
            value if convert is None else convert(value)
            for (_, convert), value in zip(self.columns, values, strict=True)
        )


class Plans:
    """Each statement's plan (or None), compiled the first time the statement runs. Keyed by
    the statement object, weakly: a statement built for one call does not stay for good."""

    def __init__(self, *, returning: bool) -> None:
        self._returning = returning  # see `Plan.of`
        self._plans: weakref.WeakKeyDictionary[sa.Executable, Plan | None] = (
            weakref.WeakKeyDictionary()
        )

    def of(self, statement: sa.Executable, dialect: sa.Dialect) -> Plan | None:
        try:
            return self._plans[statement]
        except KeyError:
            plan = self._plans[statement] = Plan.of(statement, dialect, returning=self._returning)
            return plan


def _result_converter(type_: sa.types.TypeEngine[Any], dialect: sa.Dialect) -> Any:
    """The column's result processor, as SQLAlchemy's execution would apply it. On asyncpg,
    its dialect leaves two to the connections it opens, which ours are not: JSON, which it
    decodes with a type codec set on each connection (here: decoded as it would), and numbers,
    which asyncpg already gives as SQLAlchemy does (a Decimal for NUMERIC, a float for FLOAT;
    the dialect's processor for them needs the column's type oid from a cursor)."""
    if dialect.driver == "asyncpg":
        if isinstance(type_, sa.JSON):
            return getattr(dialect, "_json_deserializer", None) or json.loads
        if isinstance(type_, sa.Numeric):
            return None
    return type_.dialect_impl(dialect).result_processor(dialect, None)
