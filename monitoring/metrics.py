"""Every aipb metric object, in one place, and the few helpers the pipeline calls.

Counters and histograms are written by whichever process does the work (gunicorn
workers, RQ work-horses); with PROMETHEUS_MULTIPROC_DIR set, prometheus_client keeps
them in per-process files that /metrics aggregates (aipb.prometheus_multiprocess keeps the
number of files bounded). Scrape-time gauges (queue sizes, DLQ, workers, validation pass
rate, build info) live in monitoring.collectors and read Redis or a bounded query; none of
them is a prometheus_client Gauge, so none needs a multiprocess mode. A Gauge added here
must name its ``multiprocess_mode`` explicitly (tests/monitoring/test_metrics.py checks).

The helpers are called by jobs.accounting only, after the transaction that recorded the end
commits, so a rolled-back attempt is never counted.

Label values are bounded: a ``model`` label is a catalogue model's canonical name, or ``other`` for any
name the catalogue does not know (an OpenAI-compatible OPENAI_BASE_URL accepts every name a user sends,
and each new label value would be a new series in every process's files and in Prometheus). The API,
the rows and the logs keep the real name.
"""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import Counter, Gauge, Histogram

from jobs import catalogue
from jobs.catalogue import PROVIDER_IDS
from monitoring import validation_window

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300)

JOBS = Counter("ai_jobs", "AI jobs that reached a final state", ["provider", "model", "status"])
PROCESSING = Histogram(
    "ai_jobs_processing_duration_seconds",
    "Duration of one attempt, provider call and validation included",
    ["provider", "model"],
    buckets=LATENCY_BUCKETS,
)
RETRIES = Counter("ai_jobs_retry", "Retries scheduled after a failed attempt", ["provider", "model"])
ATTEMPTS = Counter("ai_jobs_attempts", "Attempts by outcome", ["provider", "model", "outcome"])
ERRORS = Counter("ai_jobs_errors", "Failed attempts by error type", ["provider", "model", "error_type"])
VALIDATION = Counter(
    "ai_jobs_validation", "Model outputs checked against the page schema", ["provider", "model", "result"]
)
TOKENS = Counter("ai_llm_tokens", "Tokens reported by providers", ["provider", "model", "type"])
COST = Counter("ai_llm_cost_usd", "Estimated provider cost in USD", ["provider", "model"])
RATE_LIMIT_WAITS = Counter(
    "ai_rate_limit_wait", "Deliveries re-scheduled because no rate-limit token was free", ["provider"]
)
QUEUE_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
QUEUE_WAIT = Histogram(
    "ai_job_queue_wait_seconds",
    "Seconds from a job's submission to the claim of its first attempt by a worker",
    ["provider", "priority"],
    buckets=QUEUE_WAIT_BUCKETS,
)

OTHER_MODEL = "other"
# The catalogue's canonical names per provider, for the price data in use (it changes when fresher data is
# fetched): (price data version, {provider: names}).
_names: tuple[str, dict[str, frozenset[str]]] = ("", {})


def _catalogue_names(provider: str) -> frozenset[str]:
    global _names
    version = catalogue.price_data_version()
    if _names[0] != version:
        by_provider: dict[str, set[str]] = {}
        for info in catalogue.models():
            by_provider.setdefault(info.provider, set()).add(info.name)
        _names = (version, {name: frozenset(names) for name, names in by_provider.items()})  # threads: either wins
    return _names[1].get(provider, frozenset())


def model_label(provider: str, model: str) -> str:
    """The ``model`` label value: the catalogue's name for it (an alias counts under its canonical name), or
    ``other``."""
    name = catalogue.canonical_model(provider, model)
    return name if name in _catalogue_names(provider) else OTHER_MODEL


def job_finished(*, provider: str, model: str, status: str) -> None:
    JOBS.labels(provider, model_label(provider, model), status).inc()


def attempt_finished(
    *,
    provider: str,
    model: str,
    outcome: str,
    seconds: float,
    error_type: str = "",
) -> None:
    model = model_label(provider, model)
    PROCESSING.labels(provider, model).observe(seconds)
    ATTEMPTS.labels(provider, model, outcome).inc()
    if error_type:
        ERRORS.labels(provider, model, error_type).inc()


def output_validated(*, provider: str, model: str, passed: bool) -> None:
    VALIDATION.labels(provider, model_label(provider, model), "pass" if passed else "fail").inc()
    validation_window.record(passed=passed)  # ai_jobs_validation_pass_rate


def retry_scheduled(*, provider: str, model: str) -> None:
    RETRIES.labels(provider, model_label(provider, model)).inc()


def usage_recorded(
    *, provider: str, model: str, prompt: int, completion: int, cached: int, cost: Decimal | None
) -> None:
    model = model_label(provider, model)
    TOKENS.labels(provider, model, "prompt").inc(prompt)
    TOKENS.labels(provider, model, "completion").inc(completion)
    TOKENS.labels(provider, model, "cached").inc(cached)
    if cost is not None:
        COST.labels(provider, model).inc(float(cost))


def rate_limited(*, provider: str) -> None:
    RATE_LIMIT_WAITS.labels(provider).inc()


def queue_wait_observed(*, provider: str, priority: str, seconds: float) -> None:
    QUEUE_WAIT.labels(provider, priority).observe(seconds)


# Calls whose usage was recorded with no price in force (cost NULL): spend the reports cannot show.
UNPRICED_CALLS = Counter(
    "ai_llm_unpriced_calls", "Provider calls recorded without a price (their cost is unknown)", ["provider"]
)
for _provider in PROVIDER_IDS:
    # At 0 from the start, so the first unpriced call is an increase an alert can see.
    UNPRICED_CALLS.labels(_provider)


def llm_unpriced_call(*, provider: str) -> None:
    UNPRICED_CALLS.labels(provider).inc()


# Schedules (schedules.scheduler): each firing's outcome, and when a scheduler last looked for due firings.
SCHEDULE_FIRING_OUTCOMES = ("submitted", "failed", "skipped")
SCHEDULE_FIRINGS = Counter(
    "ai_schedule_firings",
    "Schedule firings: submitted (its job made), failed (submission refused, see the firing's error), skipped "
    "(another scheduler process fired that instant, or the schedule was paused or deleted meanwhile)",
    ["outcome"],
)
for _outcome in SCHEDULE_FIRING_OUTCOMES:
    SCHEDULE_FIRINGS.labels(_outcome)
# max over processes: the freshest tick of any scheduler on the host (one alive is enough); a dead process's
# file keeps its last value, so a host whose only scheduler died shows the tick getting old (AISchedulerStopped).
SCHEDULER_LAST_TICK = Gauge(
    "ai_scheduler_last_tick_timestamp_seconds",
    "Unix time a scheduler process last finished looking for due schedule firings",
    multiprocess_mode="max",
)


def schedule_fired(*, outcome: str) -> None:
    SCHEDULE_FIRINGS.labels(outcome).inc()


def scheduler_ticked(*, at: float) -> None:
    SCHEDULER_LAST_TICK.set(at)


# Batches (jobs.batches) that finished: every job final, by the batch's status then (completed, or canceled).
BATCHES = Counter("ai_batches", "Batches whose jobs all reached a final state, by the batch's status", ["status"])
BATCH_STATUSES = ("completed", "canceled")
for _status in BATCH_STATUSES:
    BATCHES.labels(_status)  # at 0 from the start, like the unpriced calls


def batch_finished(*, status: str) -> None:
    BATCHES.labels(status if status in BATCH_STATUSES else "other").inc()


# Webhook deliveries (webhooks.delivery, after each try's row is written). outcome: delivered | retrying (a try
# failed, another is scheduled) | failed (the last try failed) | refused (the URL resolved to a non-public address)
WEBHOOK_OUTCOMES = ("delivered", "retrying", "failed", "refused")
WEBHOOK_DELIVERIES = Counter("ai_webhook_deliveries", "Webhook delivery tries by outcome", ["outcome"])
WEBHOOK_LATENCY = Histogram(
    "ai_webhook_delivery_duration_seconds",
    "Time from the start of a webhook try to the receiver's answer (or the error)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30),
)


for _outcome in WEBHOOK_OUTCOMES:  # every outcome on /metrics from the start, at 0: rate() sees the first one
    WEBHOOK_DELIVERIES.labels(_outcome)


def webhook_delivery_tried(*, outcome: str, seconds: float | None) -> None:
    WEBHOOK_DELIVERIES.labels(outcome if outcome in WEBHOOK_OUTCOMES else "failed").inc()
    if seconds is not None:
        WEBHOOK_LATENCY.observe(seconds)


BUDGET_REFUSALS = Counter(
    "ai_budget_refusals",
    "Submissions refused (stage=submit) and jobs ended BUDGET_EXCEEDED before their call (stage=pipeline) because a "
    "spending limit was reached",
    ["scope", "stage"],
)


BUDGET_SCOPES = ("user", "group", "default")
BUDGET_STAGES = ("submit", "pipeline")
for _scope in BUDGET_SCOPES:
    for _stage in BUDGET_STAGES:
        BUDGET_REFUSALS.labels(_scope, _stage)


def budget_refused(*, scope: str, stage: str) -> None:
    """Called by usage.budgets when it refuses: the refusal is the event (a submission writes nothing)."""
    BUDGET_REFUSALS.labels(scope=scope, stage=stage).inc()


# Routing (jobs.routing): attempts sent to a target other than their job's own, and deliveries handed back because
# every target of the job's chain had its circuit open. Provider ids only: bounded.
FALLBACKS = Counter(
    "ai_jobs_fallback",
    "Attempts routed to a fallback target instead of the job's own",
    ["from_provider", "to_provider"],
)
CIRCUIT_WAITS = Counter(
    "ai_circuit_wait",
    "Deliveries re-scheduled because every target of the job's chain had its circuit open",
    ["provider"],
)


for _provider in PROVIDER_IDS:
    CIRCUIT_WAITS.labels(_provider)  # at 0 from the start, like UNPRICED_CALLS


def fallback_routed(*, from_provider: str, to_provider: str) -> None:
    FALLBACKS.labels(from_provider, to_provider).inc()


def circuit_waited(*, provider: str) -> None:
    CIRCUIT_WAITS.labels(provider).inc()
