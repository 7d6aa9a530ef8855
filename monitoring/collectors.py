"""Scrape-time gauges: computed when /metrics is scraped, from Redis or one bounded query.

Their cost does not grow with the jobs or usage tables:

- ``ai_queue_size{status}``: per queue, one LLEN and four ZCARD/ZCOUNT on RQ's queue list and
  registries, all in one pipelined round trip;
- ``ai_workers{state}``: one SUNION of RQ's per-queue worker sets, then one HGET per
  registered worker, pipelined;
- ``ai_jobs_validation_pass_rate``: one MGET of monitoring.validation_window's per-bucket counters;
- ``ai_dlq_entries{status}``: a GROUP BY over the dead-letter table, which retention keeps
  at AI_DLQ_MAX_ENTRIES rows at most;
- ``ai_build_info{version,commit}``: version.json, read once per process.

Every worker host's metrics_server and the web app report the same values (they read the
same Redis and Postgres), so dashboards and alerts aggregate them with max(). When Redis or
Postgres cannot be read the affected families are left out of the scrape (and logged)
rather than reported as zeros; the rest of the scrape still works.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from django.db import DatabaseError
from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily, Metric
from redis.exceptions import RedisError
from rq.queue import Queue
from rq.registry import FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from aipb.redis_client import get_redis
from aipb.views import build_info
from jobs.queues import QUEUE_ORDER
from monitoring import validation_window

log = logging.getLogger(__name__)

QUEUE_STATUSES = ("waiting", "active", "delayed", "completed", "failed")
WORKER_STATES = ("idle", "busy", "suspended")
# RQ's worker hash `state` → ours: a live worker that is neither busy nor suspended can take a job
# ("started" and "?" are a worker between registering and its first dequeue).
_RQ_WORKER_STATE = {"busy": "busy", "suspended": "suspended"}


def queue_sizes(conn, *, now: float | None = None) -> dict[str, int]:
    """Jobs per state over the AI queues, from RQ's structures in Redis (one round trip).

    active/completed/failed count only registry entries that have not expired: an entry whose
    worker died stops counting as active once its heartbeat lapses.
    """
    now = time.time() if now is None else now
    pipe = conn.pipeline(transaction=False)
    for name in QUEUE_ORDER:
        pipe.llen(Queue.redis_queue_namespace_prefix + name)
        pipe.zcount(StartedJobRegistry.key_template.format(name), now, "+inf")
        pipe.zcard(ScheduledJobRegistry.key_template.format(name))
        pipe.zcount(FinishedJobRegistry.key_template.format(name), now, "+inf")
        pipe.zcount(FailedJobRegistry.key_template.format(name), now, "+inf")
    replies = pipe.execute()
    sizes = dict.fromkeys(QUEUE_STATUSES, 0)
    for i, reply in enumerate(replies):
        sizes[QUEUE_STATUSES[i % len(QUEUE_STATUSES)]] += int(reply)
    return sizes


def worker_states(conn) -> dict[str, int]:
    """RQ workers listening on any AI queue, by state (two round trips, O(workers))."""
    keys = sorted(conn.sunion([WORKERS_BY_QUEUE_KEY % name for name in QUEUE_ORDER]))
    states = dict.fromkeys(WORKER_STATES, 0)
    if not keys:
        return states
    pipe = conn.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, "state")
    for raw in pipe.execute():
        if raw is None:  # died without unregistering; its hash has expired
            continue
        states[_RQ_WORKER_STATE.get(raw.decode() if isinstance(raw, bytes) else raw, "idle")] += 1
    return states


def dlq_counts() -> dict[str, int]:
    from dlq.models import DeadLetter, DeadLetterStatus

    counts = dict.fromkeys(DeadLetterStatus.values, 0)
    # COUNT(*), not COUNT(id): Postgres answers it from the status index without reading the payloads
    rows = DeadLetter.objects.order_by().values_list("status").annotate(n=Count("*"))
    for status, n in rows:
        counts[status] = n
    return counts


class ScrapeTimeCollector:
    """The gauges computed at scrape time; registered per scrape next to the counters."""

    def collect(self) -> Iterator[Metric]:
        yield from self._redis_families()
        yield from self._dlq_family()
        info = build_info()
        family = GaugeMetricFamily("ai_build_info", "The build this process runs", labels=["version", "commit"])
        family.add_metric([info["version"], info["commit"]], 1)
        yield family

    def _redis_families(self) -> Iterator[Metric]:
        try:
            conn = get_redis()
            sizes = queue_sizes(conn)
            workers = worker_states(conn)
            rate = validation_window.pass_rate()
        except RedisError as exc:
            log.warning("metrics: Redis unreachable, queue/worker/validation gauges left out: %s", exc)
            return
        family = GaugeMetricFamily("ai_queue_size", "Jobs in the AI queues by state (RQ)", labels=["status"])
        for status in QUEUE_STATUSES:
            family.add_metric([status], sizes[status])
        yield family
        family = GaugeMetricFamily("ai_workers", "RQ workers on the AI queues by state", labels=["state"])
        for state in WORKER_STATES:
            family.add_metric([state], workers[state])
        yield family
        # No sample when nothing was validated in the window: there is no rate to report.
        family = GaugeMetricFamily(
            "ai_jobs_validation_pass_rate",
            "Percent of model outputs that passed page validation over the last AI_VALIDATION_WINDOW_SECONDS",
        )
        if rate is not None:
            family.add_metric([], rate)
        yield family

    def _dlq_family(self) -> Iterator[Metric]:
        try:
            counts = dlq_counts()
        except DatabaseError as exc:
            log.warning("metrics: database unreachable, ai_dlq_entries left out: %s", exc)
            return
        family = GaugeMetricFamily("ai_dlq_entries", "Dead-letter entries by status", labels=["status"])
        for status, n in sorted(counts.items()):
            family.add_metric([status], n)
        yield family
