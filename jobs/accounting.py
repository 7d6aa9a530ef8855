"""The one place that counts how attempts and jobs end, whoever ended them (a worker, lease recovery, an
operator): attempts by outcome, errors, retries, tokens and cost, and entries into a final state.

Called after the transaction that recorded the end has committed, so a rolled-back change is never counted,
and the counters equal the rows they describe (tests/e2e/books.py holds the drills to that).
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from jobs.errors import Classified
from jobs.models import JobStatus
from jobs.transitions import AttemptRecord
from monitoring import metrics


def attempt_ended(
    *,
    provider: str,
    model: str,
    record: AttemptRecord,
    seconds: float,
    outcome: str | None,
    error: Classified | None,
    status: str | None,
    cost: Decimal | None = None,
) -> None:
    """One attempt's end. `status` is the job's new state when this end changed it (None: it did not);
    `outcome` None: the attempt was counted already (lease recovery took it back before its worker finished;
    the worker still brings its output's validation and usage, counted here as recorded in its rows)."""
    if outcome is not None:
        metrics.attempt_finished(
            provider=provider, model=model, outcome=outcome, seconds=seconds, error_type=error.type if error else ""
        )
    if record.validation_passed is not None:
        metrics.output_validated(provider=provider, model=model, passed=record.validation_passed)
    if record.usage is not None:
        metrics.usage_recorded(
            provider=provider,
            model=model,
            prompt=record.usage.prompt_tokens,
            completion=record.usage.completion_tokens,
            cached=record.usage.cached_tokens,
            cost=cost,
        )
    if status == JobStatus.RETRYING:
        metrics.retry_scheduled(provider=provider, model=model)
    elif status is not None:
        job_ended(provider=provider, model=model, status=status)


def job_ended(*, provider: str, model: str, status: str) -> None:
    """Entry into a final state (succeeded, dead, canceled)."""
    metrics.job_finished(provider=provider, model=model, status=status)


def jobs_canceled(rows: Iterable[tuple[str, str]]) -> None:
    for provider, model in rows:
        job_ended(provider=provider, model=model, status=JobStatus.CANCELED)


def delivery_throttled(*, provider: str) -> None:
    metrics.rate_limited(provider=provider)
