"""Prepared statements for the hand-written SQL of the hot paths (a POST's admission, an attempt's claim and end).

Django's psycopg backend binds parameters on the client and never prepares (``prepare_threshold`` None, for
connection poolers), so Postgres parses and plans each statement every time it runs. For the admission's
INSERT ... SELECT with its common table expressions that planning cost more than running it (EXPLAIN ANALYZE:
0.5 ms planning, 0.2 ms execution). ``cursor()`` is Django's own cursor (execute wrappers, the debug log, its
errors) over a server-binding psycopg cursor that prepares every statement it runs on its connection: a
statement is parsed and planned once per connection and from then on only bound and executed. A pooled
connection (the threaded worker's) keeps its statements across the threads that borrow it.

Only statements of one fixed text belong here (psycopg keeps up to ``prepared_max``, 100, per connection and
evicts the oldest beyond that). Server-side binding sends each parameter with its type: a ``None`` or a ``str``
goes as ``unknown`` and takes its type from where it is used, so a parameter whose place gives it none (a
SELECT list that an INSERT reads) needs a cast, as ``aipb.rows.ModelRows.placeholders`` writes them.

psycopg prepares only on a connection with a ``prepare_threshold``: settings sets one that counting never
reaches (DATABASE_PREPARED_STATEMENTS), so these statements, which ask, are the only ones prepared."""

from __future__ import annotations

from django.conf import settings
from django.db import connections
from django.db.backends.postgresql.base import ServerBindingCursor
from django.db.backends.utils import CursorWrapper

from aipb import tracing


class _PreparingCursor(ServerBindingCursor):
    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=True, binary=binary)


def cursor(using: str = "default") -> CursorWrapper:
    """A cursor, as ``connections[using].cursor()`` gives one, whose statements are prepared (with
    DATABASE_PREPARED_STATEMENTS off, or in a process that traces its SQL, whose instrumentation sees only the
    cursors the connection makes, that cursor itself)."""
    connection = connections[using]
    if not settings.DATABASE_PREPARED_STATEMENTS or tracing.sql_traced():
        return connection.cursor()
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_thread_sharing()
    with connection.wrap_database_errors:
        raw = _PreparingCursor(connection.connection)
    if connection.queries_logged:
        return connection.make_debug_cursor(raw)
    return connection.make_cursor(raw)
