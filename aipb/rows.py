"""A model's rows in hand-written SQL, as the ORM writes and reads them: the columns to name, the values an
INSERT sends (each field's ``pre_save`` and database preparation, as ``Model.save`` does) and the objects read
back (the backend's and the fields' converters, as the compiler applies them). For a statement the ORM cannot
express, such as an INSERT whose checks are part of it (jobs.admission), or one written once per process on a
per-attempt path (jobs.transitions' claim, usage.pricing's price in force: the ORM's query building and its
RawQuerySet's column mapping cost more CPU per attempt than the statements themselves, bench.pipeline --profile),
without re-stating a model's columns."""

from __future__ import annotations

from functools import cached_property

from django.db import connections, router
from django.db.models import CharField, Field, Model, TextField


def typed_placeholder(field: Field, connection, placeholder: str = "%s") -> str:
    """A parameter for ``field``'s column in a SELECT list that an INSERT reads: cast to the column's type unless
    it is text. A statement bound on the server (aipb.prepared) sends a ``None`` as ``unknown``, which such a list
    would take as text. Text columns take theirs as sent: a cast to ``varchar(n)`` would cut a value too long for
    the column where the INSERT must refuse it."""
    if isinstance(field, (CharField, TextField)):
        return placeholder
    return f"CAST({placeholder} AS {field.db_type(connection)})"


class ModelRows:
    def __init__(self, model: type[Model]) -> None:
        self.model = model

    @cached_property
    def db(self) -> str:
        return router.db_for_write(self.model)

    @cached_property
    def _fields(self) -> tuple:
        return tuple(f for f in self.model._meta.concrete_fields if not f.generated)

    @property
    def width(self) -> int:
        """How many columns ``columns()`` names (a statement's answer that has more: the row's are first)."""
        return len(self._fields)

    def columns(self, alias: str | None = None) -> str:
        """The columns, comma-separated, each qualified by ``alias`` when given."""
        qn = connections[self.db].ops.quote_name
        prefix = f"{qn(alias)}." if alias else ""
        return ", ".join(f"{prefix}{qn(f.column)}" for f in self._fields)

    def placeholders(self, prefix: str) -> str:
        """``%(<prefix>0)s, CAST(%(<prefix>1)s AS uuid), ...``: one named parameter per column, for
        ``insert_params``, each typed as ``typed_placeholder`` types it."""
        connection = connections[self.db]
        return ", ".join(typed_placeholder(f, connection, f"%({prefix}{i})s") for i, f in enumerate(self._fields))

    def insert_params(self, obj: Model, prefix: str) -> dict[str, object]:
        """The values ``obj.save(force_insert=True)`` would send, named as ``placeholders(prefix)`` names them
        (auto_now and auto_now_add fields are set on ``obj`` as save sets them)."""
        meta = self.model._meta
        if meta.db_returning_fields:  # their values come from the database: this INSERT would not read them
            raise TypeError(f"{meta.label} has columns the database fills in; insert it through the ORM")
        connection = connections[self.db]
        params = {}
        for i, field in enumerate(self._fields):
            value = field.pre_save(obj, add=True)
            if hasattr(value, "resolve_expression"):
                raise TypeError(f"{field.name}: an expression; insert it through the ORM")
            params[f"{prefix}{i}"] = field.get_db_prep_save(value, connection=connection)
        return params

    def inserted(self, obj: Model) -> None:
        """Mark ``obj`` as saved, as ``Model.save`` does once its INSERT succeeded."""
        obj._state.adding = False
        obj._state.db = self.db

    @cached_property
    def _converters(self) -> tuple:
        connection = connections[self.db]
        converters = []  # as the compiler finds them: the backend's, then the field's
        for i, col in enumerate(f.cached_col for f in self._fields):
            if found := connection.ops.get_db_converters(col) + col.get_db_converters(connection):
                converters.append((i, found, col))
        return tuple(converters)

    def from_row(self, row: tuple | list) -> Model:
        """The object of a row whose values are ``columns()``' in that order."""
        connection = connections[self.db]
        if self._converters:
            row = list(row)
            for i, converters, col in self._converters:
                for convert in converters:
                    row[i] = convert(row[i], col, connection)
        return self.model.from_db(self.db, self._attnames, row)

    @cached_property
    def _attnames(self) -> list[str]:
        return [f.attname for f in self._fields]
