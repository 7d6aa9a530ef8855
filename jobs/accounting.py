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
from jobs.providers.base import Usage
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
    if status == JobStatus.RETRYING:
        metrics.retry_scheduled(provider=provider, model=model)
    elif status is not None:
        job_ended(provider=provider, model=model, status=status)


def usage_counted(*, provider: str, model: str, usage: Usage, cost: Decimal | None, priced: bool) -> None:
    """A provider call that returned usage, counted once its row is durable (usage.recording), whatever the
    attempt's end: the tokens and cost metrics equal the usage rows. `priced` False: no price was in force
    (the call is unpriced); a spooled call's cost is not known yet, which is not the same thing."""
    metrics.usage_recorded(
        provider=provider,
        model=model,
        prompt=usage.prompt_tokens,
        completion=usage.completion_tokens,
        cached=usage.cached_tokens,
        cost=cost,
    )
    if not priced:
        metrics.llm_unpriced_call(provider=provider)


def job_ended(*, provider: str, model: str, status: str) -> None:
    """Entry into a final state (succeeded, dead, canceled)."""
    metrics.job_finished(provider=provider, model=model, status=status)


def jobs_canceled(rows: Iterable[tuple[str, str]]) -> None:
    for provider, model in rows:
        job_ended(provider=provider, model=model, status=JobStatus.CANCELED)


def delivery_throttled(*, provider: str) -> None:
    metrics.rate_limited(provider=provider)
