"""Scrape-time gauges: computed when /metrics is scraped, from Redis or one bounded query.

Their cost does not grow with the jobs or usage tables:

- ``ai_queue_size{status}``: jobs.queues.queue_sizes, one pipelined round trip over RQ's lists and registries
  (the same count queue status shows);
- ``ai_workers{state}``: jobs.redis_state.worker_states, one SUNION and one pipelined HMGET per worker;
- ``ai_worker_slots{state}``: jobs.redis_state.worker_slots, the same reads: busy and idle slots summed;
- ``ai_jobs_validation_pass_rate``: one MGET of monitoring.validation_window's per-bucket counters;
- ``ai_dlq_entries{status}``: a GROUP BY over the dead-letter table, which retention keeps
  at AI_DLQ_MAX_ENTRIES rows at most;
- ``ai_webhook_pending``: webhook deliveries not yet delivered or failed, an index-only count over a partial
  index of the pending rows, capped (webhooks.selectors.PENDING_COUNT_CAP);
- ``ai_budgets_nearly_exhausted{scope}``, ``ai_budgets_exhausted{scope}`` and ``ai_budget_spent_ratio{scope,name}``
  (the usage.budgets.WATCH_TOP most used budgets past their soft threshold only, so names stay bounded):
  usage.budgets.budget_watch, one statement over the budgets and this month's spend rows past the default's
  threshold;
- ``ai_provider_circuit_state{provider,model}`` (0 closed, 1 half-open, 2 open), ``ai_provider_probe_success`` and
  ``ai_provider_probe_latency_seconds``: jobs.routing.circuits, one ZRANGEBYSCORE of the targets called or probed
  in the last day and one pipeline over them; every configured provider's default model is always reported;
- ``ai_build_info{version,commit}``: version.json, read once per process;
- ``ai_redis_up`` and ``ai_database_up``: whether this scrape could read Redis and query Postgres.

Every worker host's metrics_server and the web app report the same values (they read the
same Redis and Postgres), so dashboards and alerts aggregate them with max(). When Redis or
Postgres cannot be read the affected families are left out of the scrape (and logged)
rather than reported as zeros, the matching ``*_up`` gauge reads 0, and the rest of the scrape works.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from django.db import DatabaseError
from prometheus_client.core import GaugeMetricFamily, Metric
from redis.exceptions import RedisError

from aipb.redis_client import get_redis
from aipb.views import build_info
from dlq.selectors import dlq_counts
from jobs.providers import registry
from jobs.queues import QUEUE_STATUSES, queue_sizes, sizes_total
from jobs.redis_state import WORKER_STATES, worker_slots, worker_states
from jobs.routing import circuits
from jobs.routing.circuits import Target
from monitoring import metrics, validation_window
from usage.budgets import budget_watch
from webhooks.selectors import webhook_pending_count

log = logging.getLogger(__name__)


class ScrapeTimeCollector:
    """The gauges computed at scrape time; registered per scrape next to the counters."""

    def collect(self) -> Iterator[Metric]:
        yield from self._redis_families()
        yield from self._dlq_family()
        yield from self._budget_families()
        info = build_info()
        family = GaugeMetricFamily("ai_build_info", "The build this process runs", labels=["version", "commit"])
        family.add_metric([info["version"], info["commit"]], 1)
        yield family

    def _redis_families(self) -> Iterator[Metric]:
        try:
            conn = get_redis()
            sizes = sizes_total(queue_sizes(conn))
            workers = worker_states(conn)
            slots = worker_slots(conn)
            rate = validation_window.pass_rate()
            health = _targets_health()
        except RedisError as exc:
            log.warning("metrics: Redis unreachable, queue/worker/validation gauges left out: %s", exc)
            yield _up("ai_redis_up", "1 when this scrape could read Redis, 0 when it could not", False)
            return
        yield _up("ai_redis_up", "1 when this scrape could read Redis, 0 when it could not", True)
        family = GaugeMetricFamily("ai_queue_size", "Jobs in the AI queues by state (RQ)", labels=["status"])
        for status in QUEUE_STATUSES:
            family.add_metric([status], sizes[status])
        yield family
        family = GaugeMetricFamily("ai_workers", "RQ workers on the AI queues by state", labels=["state"])
        for state in WORKER_STATES:
            family.add_metric([state], workers[state])
        yield family
        family = GaugeMetricFamily(
            "ai_worker_slots", "In-flight attempt slots of the live workers, busy or idle", labels=["state"]
        )
        for state in ("busy", "idle"):
            family.add_metric([state], slots[state])
        yield family
        # No sample when nothing was validated in the window: there is no rate to report.
        family = GaugeMetricFamily(
            "ai_jobs_validation_pass_rate",
            "Percent of model outputs that passed page validation over the last AI_VALIDATION_WINDOW_SECONDS",
        )
        if rate is not None:
            family.add_metric([], rate)
        yield family
        yield from _health_families(health)

    def _dlq_family(self) -> Iterator[Metric]:
        try:
            counts = dlq_counts()
        except DatabaseError as exc:
            log.warning("metrics: database unreachable, ai_dlq_entries left out: %s", exc)
            yield _up("ai_database_up", "1 when this scrape could query Postgres, 0 when it could not", False)
            return
        yield _up("ai_database_up", "1 when this scrape could query Postgres, 0 when it could not", True)
        family = GaugeMetricFamily("ai_dlq_entries", "Dead-letter entries by status", labels=["status"])
        for status, n in sorted(counts.items()):
            family.add_metric([status], n)
        yield family
        try:
            pending = webhook_pending_count()
        except DatabaseError as exc:  # Postgres went away between the two reads
            log.warning("metrics: database unreachable, ai_webhook_pending left out: %s", exc)
            return
        family = GaugeMetricFamily("ai_webhook_pending", "Webhook deliveries waiting for a first try or a retry")
        family.add_metric([], pending)
        yield family

    def _budget_families(self) -> Iterator[Metric]:
        try:
            watch = budget_watch()
        except DatabaseError as exc:
            log.warning("metrics: database unreachable, budget gauges left out: %s", exc)
            return
        for name, documentation, counts in (
            (
                "ai_budgets_nearly_exhausted",
                "Spending limits at or past their soft threshold this month, exhausted ones included (default: users)",
                watch.nearly_exhausted,
            ),
            ("ai_budgets_exhausted", "Spending limits reached this month (default: users)", watch.exhausted),
        ):
            family = GaugeMetricFamily(name, documentation, labels=["scope"])
            for scope in metrics.BUDGET_SCOPES:
                family.add_metric([scope], counts[scope])
            yield family
        family = GaugeMetricFamily(
            "ai_budget_spent_ratio",
            "Spend over limit this month of the most used limits past their soft threshold (1 = reached)",
            labels=["scope", "name"],
        )
        for scope, holder, ratio in watch.top:
            family.add_metric([scope, holder], ratio)
        yield family


def _targets_health() -> dict[Target, circuits.Health]:
    """The targets called or probed lately, and every configured provider's default model (so its circuit is a
    series at 0 before anything went wrong), each under its metric label (model_label: catalogue names or other)."""
    targets = {
        (spec.id, metrics.model_label(spec.id, spec.default_model)): Target(spec.id, spec.default_model)
        for spec in registry.PROVIDERS
        if registry.configured(spec.id)
    }
    for target in circuits.known_targets():
        targets.setdefault((target.provider, metrics.model_label(target.provider, target.model)), target)
    found = circuits.health(list(targets.values()))
    return {Target(*labels): found[target] for labels, target in targets.items()}


def _health_families(health: dict[Target, circuits.Health]) -> Iterator[Metric]:
    family = GaugeMetricFamily(
        "ai_provider_circuit_state",
        "Circuit of each provider/model target: 0 closed, 1 half-open (one probe call), 2 open (not called)",
        labels=["provider", "model"],
    )
    for target, found in sorted(health.items()):
        family.add_metric(list(target), circuits.STATE_VALUES.get(found.circuit, 0))
    yield family
    probed = sorted((t, h) for t, h in health.items() if h.probe_ok is not None)
    family = GaugeMetricFamily(
        "ai_provider_probe_success",
        "1 when the last health probe of the target (manage.py providers probe) was answered, else 0",
        labels=["provider", "model"],
    )
    for target, found in probed:
        family.add_metric(list(target), 1 if found.probe_ok else 0)
    yield family
    family = GaugeMetricFamily(
        "ai_provider_probe_latency_seconds", "Duration of the target's last health probe", labels=["provider", "model"]
    )
    for target, found in probed:
        family.add_metric(list(target), (found.probe_latency_ms or 0) / 1000)
    yield family


def _up(name: str, documentation: str, up: bool) -> Metric:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], 1 if up else 0)
    return family
