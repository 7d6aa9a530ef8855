"""The peers bench.io_bound measures ours against, with the same job shape: sleep the simulated latency, then
write one row to Postgres (``bench_peer_row``: when the job started and finished), from a psycopg pool bounded
per process like ours. Our attempt does more than that (the claim, the attempt row, usage, the final state):
the peers' job is the floor of what any queue must do per call, so ours/peer is what our bookkeeping costs.

- Celery, ``--pool=threads`` and ``--pool=gevent`` at concurrency C (bench.celery_peer; Redis broker on the
  benchmark's Redis database, results off, Celery's other defaults);
- a bare RQ pool: ``rq worker-pool -n C --worker-class rq.worker.SimpleWorker`` (one job at a time per
  process, its connection kept between jobs; RQ's forking class would open one per job, in the work-horse),
  as WarmSimpleWorker: the job's module imported and its connection opened as the worker starts, as ours are
  (ten processes importing psycopg at their first job, on two cores, delayed that job by ~1.5 s).

No Django here: the peers import this module in their own processes. Celery and gevent come from
requirements-bench.txt (their own venv, .venv-bench), never from requirements.txt.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from datetime import UTC, datetime

from psycopg_pool import ConnectionPool
from rq.worker import SimpleWorker

TABLE = "bench_peer_row"
QUEUE = "aipb-bench-peer"  # the peers' queue (Celery's list, RQ's rq:queue:...), apart from ours
MONITOR = "aipb-bench-monitor"  # application_name of the benchmark's own connections, not counted as a peer's

_pool = None
_pool_lock = threading.Lock()


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def libpq_url(url: str) -> str:
    """DATABASE_URL as libpq takes it (it knows postgresql:// and postgres://, not dj-database-url's aliases)."""
    return "postgresql://" + url.split("://", 1)[1]


def celery_broker_url(url: str) -> str:
    """REDIS_URL as Celery's Redis transport takes it: a unix socket is redis+socket://PATH?virtual_host=DB."""
    if not url.startswith("unix://"):
        return url
    path, _, query = url[len("unix://") :].partition("?")
    params = dict(item.split("=", 1) for item in query.split("&") if "=" in item)
    return f"redis+socket://{path}?virtual_host={params.get('db', '0')}"


def _connections():
    global _pool
    with _pool_lock:
        if _pool is None:
            size = int(os.environ.get("BENCH_PEER_POOL_SIZE") or 1)
            _pool = ConnectionPool(
                libpq_url(os.environ["DATABASE_URL"]), min_size=1, max_size=size, timeout=30, open=True
            )
    return _pool


def sleep_and_write(latency_ms: int, n: int) -> None:
    """The peers' job: the simulated provider call, then one short transaction (one INSERT)."""
    started_at = datetime.now(UTC)
    time.sleep(latency_ms / 1000)
    with _connections().connection() as conn:
        conn.execute(
            f"INSERT INTO {TABLE} (n, started_at, finished_at) VALUES (%s, %s, %s)",
            (n, started_at, datetime.now(UTC)),
        )


class WarmSimpleWorker(SimpleWorker):
    """RQ's SimpleWorker, with the job's connection pool open before the first job (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _connections().wait(timeout=30)


def ensure_table() -> None:
    """Create (in the benchmark's own database) and empty the peers' table; no migration knows it."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, n integer NOT NULL, "
            "started_at timestamptz NOT NULL, finished_at timestamptz NOT NULL)"
        )
        cursor.execute(f"TRUNCATE {TABLE} RESTART IDENTITY")


def rows() -> list[tuple[datetime, datetime]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"SELECT started_at, finished_at FROM {TABLE}")
        return cursor.fetchall()


def row_counter():
    """A function counting the rows, on a connection of its own named MONITOR (not counted as the peer's)."""
    import psycopg

    conn = psycopg.connect(libpq_url(os.environ["DATABASE_URL"]), application_name=MONITOR, autocommit=True)

    def count() -> int:
        return conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]

    count.close = conn.close
    return count


def clear_celery_keys(conn) -> None:
    """The Celery queue and kombu's bookkeeping keys in the benchmark's Redis database (reset_state leaves them)."""
    keys = [k for pattern in (f"{QUEUE}*", "_kombu.*", "unacked*") for k in conn.scan_iter(match=pattern)]
    if keys:
        conn.unlink(*keys)
