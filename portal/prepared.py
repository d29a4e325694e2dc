"""Querysets compiled to SQL once per connection and run again with other values.

For the few reads every request of an API client makes (its API token, a QIDO-RS search inside one
study), building the queryset and compiling it cost more CPU than the database took to answer: about
two thirds of such a request. Here the ORM builds and compiles the queryset once, with placeholder
values; each later call runs that same SQL with the real values in the placeholders' parameter slots
and converts the columns with the same converters the ORM would use. The statement is therefore exactly
the one the queryset runs, and every call still asks the database (nothing is cached but the SQL text).
:func:`update` does the same for the UPDATEs every ingest batch makes (its quota, its series' counters).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Model, QuerySet
from django.db.models.sql import UpdateQuery

# Compiled statements kept per connection; keys are shapes chosen by the callers (a handful each), the
# bound only guards against a caller whose keys come from request input.
MAX_STATEMENTS = 256


@dataclass(frozen=True)
class _Statement:
    sql: str
    params: tuple[Any, ...]
    slots: dict[str, tuple[int, ...]]  # placeholder name -> its positions in params
    names: tuple[str, ...]  # the values() keys, in column order
    converters: tuple[tuple[int, tuple[Callable[..., Any], ...], Any], ...]


_statements: weakref.WeakKeyDictionary[BaseDatabaseWrapper, OrderedDict[Hashable, _Statement]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def _placeholder(name: str, kind: type, number: int) -> int | str:
    # Values no caller sends: a string with a NUL (refused by PostgreSQL as text) or a huge negative id.
    if kind is int:
        return -(2**62) - number
    if kind is str:
        return f"\x00prepared:{name}\x00"
    raise TypeError(f"a prepared query's value is an int or a str, not {kind.__name__}")


def _placeholders(kinds: dict[str, type]) -> dict[str, int | str]:
    return {name: _placeholder(name, kind, n) for n, (name, kind) in enumerate(sorted(kinds.items()))}


def _slots(sql: str, params: Sequence[Any], placeholders: dict[str, int | str]) -> dict[str, tuple[int, ...]]:
    """Where each placeholder sits in ``params`` (a value may be used more than once)."""
    slots: dict[str, tuple[int, ...]] = {}
    for name, placeholder in placeholders.items():
        # isinstance: on PostgreSQL a number inside an expression (F("used") + size) comes wrapped (psycopg's
        # Int4, an int), and the value put in its place later is wrapped the same way.
        positions = tuple(i for i, p in enumerate(params) if isinstance(p, type(placeholder)) and p == placeholder)
        # A lookup that rewrote the value (icontains adds %...%) or inlined it in the SQL cannot be reused.
        if not positions or str(placeholder) in sql:
            raise ValueError(f"the value {name!r} does not reach the SQL as one parameter")
        slots[name] = positions
    return slots


def _compile(connection: BaseDatabaseWrapper, build: Callable[..., QuerySet], kinds: dict[str, type]) -> _Statement:
    placeholders = _placeholders(kinds)
    queryset = build(**placeholders)
    query = queryset.query
    if query.extra_select or query.annotation_select or not query.values_select:
        raise ValueError("a prepared query is a values() queryset of fields only")
    # The keys as ValuesIterable names them, in the order of the columns.
    names = tuple(query.selected) if query.selected else tuple(query.values_select)
    compiler = query.get_compiler(connection=connection)
    sql, params = compiler.as_sql()
    slots = _slots(sql, params, placeholders)
    expressions = [column[0] for column in compiler.select[: compiler.col_count]]
    converters = tuple(
        (position, tuple(convs), expression) for position, (convs, expression) in compiler.get_converters(expressions).items()
    )
    return _Statement(sql, tuple(params), slots, names, converters)


def _bound(
    key: Hashable,
    compile_statement: Callable[[BaseDatabaseWrapper, dict[str, type]], _Statement],
    values: dict[str, Any],
) -> tuple[BaseDatabaseWrapper, _Statement, list[Any]]:
    """The statement ``key`` names on this thread's connection (compiled now if new) and its parameters."""
    connection = connections[DEFAULT_DB_ALIAS]
    kinds = {name: type(value) for name, value in values.items()}
    if any(kind not in (int, str) for kind in kinds.values()):
        raise TypeError("a prepared query's values are ints or strs")
    full_key = (key, tuple(sorted(kinds.items(), key=lambda item: item[0])), connection.vendor)
    with _lock:
        statements = _statements.setdefault(connection, OrderedDict())
        statement = statements.get(full_key)
        if statement is not None:
            statements.move_to_end(full_key)
    if statement is None:
        statement = compile_statement(connection, kinds)
        with _lock:
            statements[full_key] = statement
            while len(statements) > MAX_STATEMENTS:
                statements.popitem(last=False)
    params = list(statement.params)
    for name, positions in statement.slots.items():
        for position in positions:
            wrapper = type(statement.params[position])
            params[position] = values[name] if wrapper in (int, str) else wrapper(values[name])
    return connection, statement, params


def rows(key: Hashable, build: Callable[..., QuerySet], /, **values: int | str) -> list[dict[str, Any]]:
    """Run ``build(**values)`` (a ``values()`` queryset) and return its rows as dicts, compiled once.

    ``key`` names the shape of the query: two calls with the same key and the same value names must build
    the same SQL whatever their ``values`` (other names compile a statement of their own). Each value is
    an int or a str that the queryset uses as one plain parameter (``field=value``), never None (``= NULL``
    is not ``IS NULL``).
    """
    connection, statement, params = _bound(key, lambda connection, kinds: _compile(connection, build, kinds), values)
    with connection.cursor() as cursor:
        cursor.execute(statement.sql, params)
        fetched = cursor.fetchall()
    names = statement.names
    result = []
    for row in fetched:
        if statement.converters:
            row = list(row)
            for position, convs, expression in statement.converters:
                value = row[position]
                for convert in convs:
                    value = convert(value, expression, connection)
                row[position] = value
        result.append(dict(zip(names, row, strict=False)))
    return result


def update(key: Hashable, build: Callable[..., tuple[QuerySet, dict[str, Any]]], /, **values: int | str) -> int:
    """Run the UPDATE that ``build(**values)`` describes, compiled once; return the number of rows changed.

    ``build`` returns ``(queryset, assignments)``: what ``queryset.update(**assignments)`` would run, on one
    table filtered by its own columns. ``key`` and the values follow the rules of :func:`rows`; a value may
    appear in the filter and in the assignments alike (``F("used") + size``).
    """
    connection, statement, params = _bound(
        key, lambda connection, kinds: _compile_update(connection, build, kinds), values
    )
    # As QuerySet.update does: a failed statement marks the transaction for rollback even if it is caught.
    with transaction.mark_for_rollback_on_error(using=DEFAULT_DB_ALIAS), connection.cursor() as cursor:
        cursor.execute(statement.sql, params)
        return int(cursor.rowcount)


def _compile_update(
    connection: BaseDatabaseWrapper, build: Callable[..., tuple[QuerySet, dict[str, Any]]], kinds: dict[str, type]
) -> _Statement:
    placeholders = _placeholders(kinds)
    queryset, assignments = build(**placeholders)
    query = queryset.query.chain(UpdateQuery)
    query.add_update_values(assignments)
    query.annotations = {}
    query.get_initial_alias()
    # Joins or a parent model's fields make Django run other statements first: not one to reuse.
    if query.related_updates or query.count_active_tables() != 1:
        raise ValueError("a prepared update changes one table, filtered by its own columns")
    sql, params = query.get_compiler(connection=connection).as_sql()
    return _Statement(sql, tuple(params), _slots(sql, params, placeholders), (), ())


def model_from_row(model: type[Model], row: dict[str, Any], fields: Iterable[str], prefix: str = "") -> Any:
    """An instance of ``model`` from a row of :func:`rows` that selected ``prefix + field`` for ``fields``.

    The other fields stay deferred. ``from_db`` takes a subset of the fields in the model's own order
    only, so the order is taken from the model here, whatever the order of ``fields``.
    """
    wanted = set(fields)
    names = [f.attname for f in model._meta.concrete_fields if f.attname in wanted]
    return model.from_db(model._default_manager.db, names, [row[prefix + name] for name in names])


def in_values(prefix: str, values: Sequence[int | str]) -> dict[str, int | str]:
    """Named values for the ``__in`` list of a prepared query (``prefix0``, ``prefix1``...).

    The list is padded with its last value (which changes no match) to a power of two, so that lists
    of any length share a few compiled statements, one per size.
    """
    if not values:
        raise ValueError("an __in list of a prepared query holds at least one value")
    size = 1 << (len(values) - 1).bit_length()
    padded = [*values, *[values[-1]] * (size - len(values))]
    return {f"{prefix}{i}": value for i, value in enumerate(padded)}
