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
"""

from __future__ import annotations

from decimal import Decimal

from prometheus_client import Counter, Histogram

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


def job_finished(*, provider: str, model: str, status: str) -> None:
    JOBS.labels(provider, model, status).inc()


def attempt_finished(
    *,
    provider: str,
    model: str,
    outcome: str,
    seconds: float,
    error_type: str = "",
) -> None:
    PROCESSING.labels(provider, model).observe(seconds)
    ATTEMPTS.labels(provider, model, outcome).inc()
    if error_type:
        ERRORS.labels(provider, model, error_type).inc()


def output_validated(*, provider: str, model: str, passed: bool) -> None:
    VALIDATION.labels(provider, model, "pass" if passed else "fail").inc()
    validation_window.record(passed=passed)  # ai_jobs_validation_pass_rate


def retry_scheduled(*, provider: str, model: str) -> None:
    RETRIES.labels(provider, model).inc()


def usage_recorded(
    *, provider: str, model: str, prompt: int, completion: int, cached: int, cost: Decimal | None
) -> None:
    TOKENS.labels(provider, model, "prompt").inc(prompt)
    TOKENS.labels(provider, model, "completion").inc(completion)
    TOKENS.labels(provider, model, "cached").inc(cached)
    if cost is not None:
        COST.labels(provider, model).inc(float(cost))


def rate_limited(*, provider: str) -> None:
    RATE_LIMIT_WAITS.labels(provider).inc()


# Calls whose usage was recorded with no price in force (cost NULL): spend the reports cannot show.
UNPRICED_CALLS = Counter(
    "ai_llm_unpriced_calls", "Provider calls recorded without a price (their cost is unknown)", ["provider"]
)
for _provider in PROVIDER_IDS:
    # At 0 from the start, so the first unpriced call is an increase an alert can see.
    UNPRICED_CALLS.labels(_provider)


def llm_unpriced_call(*, provider: str) -> None:
    UNPRICED_CALLS.labels(provider).inc()
