"""What one request costs in round trips, counted in this process at the client libraries.

- SQL statements: what Django executes (its execute wrappers), savepoints included;
- Postgres round trips: what psycopg sends, one answer awaited each: Django's statements, the connection
  health check (``SELECT 1``, outside Django's wrappers) and the transaction commands (BEGIN, COMMIT,
  ROLLBACK);
- transactions: COMMITs, plus statements sent in autocommit mode (each is a transaction of its own);
- Redis round trips (each packed send awaits its answers; a pipeline is one) and Redis commands.

Counting patches the libraries' send methods while the ``with`` block runs; nothing else is changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Counts:
    sql: int = 0
    pg_round_trips: int = 0
    transactions: int = 0
    rollbacks: int = 0
    redis_round_trips: int = 0
    redis_commands: int = 0
    pg_log: list[str] = field(default_factory=list)
    redis_log: list[str] = field(default_factory=list)

    def per(self, n: int) -> dict[str, float]:
        return {
            "sql": self.sql / n,
            "pg_round_trips": self.pg_round_trips / n,
            "transactions": self.transactions / n,
            "redis_round_trips": self.redis_round_trips / n,
            "redis_commands": self.redis_commands / n,
        }


def describe(per: dict[str, float]) -> str:
    return (
        f"{per['sql']:.1f} SQL statements, {per['pg_round_trips']:.1f} Postgres round trips, "
        f"{per['transactions']:.1f} transactions, {per['redis_round_trips']:.1f} Redis round trips "
        f"({per['redis_commands']:.1f} commands)"
    )


def _first_word(sql: object) -> str:
    text = sql.decode(errors="replace") if isinstance(sql, bytes) else str(sql)
    return text.strip().split(None, 1)[0].upper() if text.strip() else "?"


class Counter:
    """``with Counter() as c: ...`` then ``c.counts``; ``keep_log=True`` keeps the first word of each command."""

    def __init__(self, *, keep_log: bool = False) -> None:
        self.counts = Counts()
        self.keep_log = keep_log
        self._restore: list[tuple[type, str, object]] = []

    def _patch(self, cls: type, name: str, make) -> None:
        original = cls.__dict__[name]
        self._restore.append((cls, name, original))
        setattr(cls, name, make(original))

    def __enter__(self) -> Counter:
        from django.db import connections
        from psycopg import _connection_base, _cursor_base, client_cursor
        from redis.connection import AbstractConnection

        counts, keep = self.counts, self.keep_log

        def pg_command(original):
            def _exec_command(conn, command, *args, **kwargs):
                word = _first_word(command if isinstance(command, str | bytes) else command.as_string(None))
                counts.pg_round_trips += 1
                counts.transactions += word == "COMMIT"
                counts.rollbacks += word == "ROLLBACK"
                if keep:
                    counts.pg_log.append(word)
                return original(conn, command, *args, **kwargs)

            return _exec_command

        def statement_sent(cursor, query):
            counts.pg_round_trips += 1
            counts.transactions += bool(cursor._conn._autocommit)
            if keep:
                alone = " (autocommit)" if cursor._conn._autocommit else ""
                counts.pg_log.append(_first_word(query.query) + alone)

        def pg_send(original):
            def _execute_send(cursor, query, *args, **kwargs):
                statement_sent(cursor, query)
                return original(cursor, query, *args, **kwargs)

            return _execute_send

        # a prepared statement runs by name (aipb.prepared): its first run on a connection prepares it first, one
        # round trip more
        def pg_send_prepared(original):
            def _send_query_prepared(cursor, name, query, *args, **kwargs):
                statement_sent(cursor, query)
                return original(cursor, name, query, *args, **kwargs)

            return _send_query_prepared

        def pg_prepare(original):
            def _send_prepare(cursor, name, query):
                counts.pg_round_trips += 1
                if keep:
                    counts.pg_log.append("PREPARE")
                return original(cursor, name, query)

            return _send_prepare

        def redis_send(original):
            def send_packed_command(conn, command, check_health=True):
                counts.redis_round_trips += 1
                if keep:
                    first = command if isinstance(command, bytes) else b"".join(command[:1])
                    counts.redis_log.append(first[:60].decode(errors="replace").replace("\r\n", " "))
                return original(conn, command, check_health)

            return send_packed_command

        # A command sent alone is packed inside send_command (redis-py 8); a pipeline's through pack_commands.
        def redis_send_command(original):
            def send_command(conn, *args, **kwargs):
                counts.redis_commands += 1
                return original(conn, *args, **kwargs)

            return send_command

        def redis_pack_commands(original):
            def pack_commands(conn, commands):
                counts.redis_commands += len(commands)
                return original(conn, commands)

            return pack_commands

        self._patch(_connection_base.BaseConnection, "_exec_command", pg_command)
        self._patch(_cursor_base.BaseCursor, "_execute_send", pg_send)
        self._patch(client_cursor.ClientCursorMixin, "_execute_send", pg_send)
        self._patch(_cursor_base.BaseCursor, "_send_query_prepared", pg_send_prepared)
        self._patch(_cursor_base.BaseCursor, "_send_prepare", pg_prepare)
        self._patch(AbstractConnection, "send_packed_command", redis_send)
        self._patch(AbstractConnection, "send_command", redis_send_command)
        self._patch(AbstractConnection, "pack_commands", redis_pack_commands)

        def sql(execute, sql, params, many, context):
            counts.sql += 1
            return execute(sql, params, many, context)

        self._wrappers = [connections[alias].execute_wrapper(sql) for alias in connections]
        for wrapper in self._wrappers:
            wrapper.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for wrapper in reversed(self._wrappers):
            wrapper.__exit__(*exc)
        for cls, name, original in reversed(self._restore):
            setattr(cls, name, original)
        self._restore.clear()
