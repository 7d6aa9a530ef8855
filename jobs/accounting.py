"""The one place that counts how attempts and jobs end, whoever ended them (a worker, lease recovery, an
operator): attempts by outcome, errors, retries, tokens and cost, and entries into a final state; and the
log line of each (one per attempt's end, one per retry scheduled, death or rate-limit wait; aipb.logs).

Called after the transaction that recorded the end has committed, so a rolled-back change is never counted
or logged, and the counters equal the rows they describe (tests/e2e/books.py holds the drills to that).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from datetime import datetime
from decimal import Decimal
from functools import partial

from django.db import transaction

from aipb.logs import log_event
from jobs import batch_selectors, transitions
from jobs.batch_serializers import batch_output
from jobs.errors import Classified
from jobs.models import AttemptOutcome, Batch, JobStatus
from jobs.providers.base import Usage
from jobs.routing.chains import Route
from jobs.transitions import AttemptRecord
from monitoring import metrics
from webhooks.models import EventType
from webhooks.records import webhook_event_add

log = logging.getLogger(__name__)


def job_claimed(*, provider: str, priority: str, attempt: int, created_at: datetime, started_at: datetime) -> None:
    """A worker claimed a job. Its first attempt observes how long the job waited for a worker since it was
    submitted; a retry's due time (next_attempt_at) is gone from the row the claim returns, so retries are not
    observed."""
    if attempt == 1:
        metrics.queue_wait_observed(
            provider=provider, priority=priority, seconds=max((started_at - created_at).total_seconds(), 0.0)
        )


def attempt_ended(
    *,
    provider: str,
    model: str,
    record: AttemptRecord,
    seconds: float,
    outcome: str | None,
    error: Classified | None,
    status: str | None,
    job_id: object = None,
    cost: Decimal | None = None,
    delay: float | None = None,
    dead_letter_id: int | None = None,
    batch_id: object = None,
) -> None:
    """One attempt's end. `status` is the job's new state when this end changed it (None: it did not);
    `outcome` None: the attempt was counted already (lease recovery took it back before its worker finished;
    the worker still brings its output's validation and usage, counted here as recorded in its rows).
    For the log only: `cost` of its provider call, the retry's `delay`, a death's `dead_letter_id`.
    `batch_id`: the job's batch, finished here if this was its last job to end."""
    _log_attempt(
        job_id=job_id,
        provider=provider,
        model=model,
        record=record,
        outcome=outcome,
        error=error,
        status=status,
        cost=cost,
        delay=delay,
        dead_letter_id=dead_letter_id,
    )
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
        if batch_id is not None:
            batches_settle([batch_id])


def _log_attempt(*, job_id, provider, model, record, outcome, error, status, cost, delay, dead_letter_id) -> None:
    usage = record.usage or Usage()
    log_event(
        log,
        "attempt_ended",
        job_id=job_id,
        attempt=record.number,
        provider=provider,
        model=model,
        # None: the attempt was ended and counted as abandoned already (lease recovery took the job back, and
        # this is its worker coming back late with the call's tokens and latency)
        outcome=outcome or f"{AttemptOutcome.ABANDONED} (already counted)",
        error_type=error.type if error else "",
        latency_ms=record.latency_ms,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        cost_usd=cost,
        status=status,
    )
    if status == JobStatus.RETRYING:
        log_event(
            log,
            "retry_scheduled",
            job_id=job_id,
            attempt=record.number,
            provider=provider,
            model=model,
            error_type=error.type if error else "",
            delay_seconds=None if delay is None else round(delay, 3),
        )
    elif status == JobStatus.DEAD:
        log_event(
            log,
            "job_dead",
            level=logging.WARNING,
            job_id=job_id,
            attempts=record.number,
            provider=provider,
            model=model,
            error_type=error.type if error else "",
            error_message=(error.message if error else "")[:300],
            dead_letter_id=dead_letter_id,
        )


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


def jobs_canceled(rows: Iterable[tuple[str, str]], *, batch_ids: Collection = ()) -> None:
    """Jobs canceled (provider, model each), of these batches."""
    for provider, model in rows:
        job_ended(provider=provider, model=model, status=JobStatus.CANCELED)
    batches_settle(list(batch_ids))


def batches_settle(batch_ids: list | None, *, created_before: datetime | None = None) -> list[Batch]:
    """After the commit that ended jobs of these batches (None: every open batch created before
    `created_before`, reconcile's sweep): each whose jobs are now all final is finished, once
    (jobs.transitions.batches_finish_if_done). One statement per call, whatever the batch's size, when no batch
    finishes.

    The one place a batch becomes completed (or, canceled, finished): its batch.completed event is written here,
    in the transaction of the UPDATE that finished it (a rolled-back finish leaves no event; a committed one
    always has it), and its count and log line come once that commits."""
    with transaction.atomic():
        finished = transitions.batches_finish_if_done(batch_ids=batch_ids, created_before=created_before)
        if finished:
            _batch_events(finished)
            transaction.on_commit(partial(_batches_finished, finished))
    return finished


def _batch_events(finished: list[Batch]) -> None:
    """batch.completed for each finished batch whose webhook asks for it (a canceled one's too, its status
    canceled), its data the batch as GET /api/ai/batches/{id} shows it, read inside the finishing transaction:
    three statements for any number of batches (the batches with their owners, their counts, their costs), then
    one INSERT per event."""
    wanted = [batch.id for batch in finished if EventType.BATCH_COMPLETED in (batch.webhook or {}).get("events", ())]
    if not wanted:
        return
    for view in batch_selectors.batch_views(list(Batch.objects.select_related("owner").filter(id__in=wanted))):
        webhook_event_add(
            owner=view.batch.owner,
            spec=view.batch.webhook,
            event_type=EventType.BATCH_COMPLETED,
            data=batch_output(view),
            subject_id=view.batch.id,
        )


def _batches_finished(finished: list[Batch]) -> None:
    for batch in finished:
        metrics.batch_finished(status=batch.status)
        log_event(log, "batch_finished", batch_id=batch.id, status=batch.status, total=batch.total)


def delivery_throttled(*, provider: str, job_id: object = None, delay: float | None = None) -> None:
    """A delivery found no rate-limit token and was put back `delay` seconds later, its attempt budget untouched."""
    metrics.rate_limited(provider=provider)
    log_event(
        log,
        "rate_limit_wait",
        job_id=job_id,
        provider=provider,
        delay_seconds=None if delay is None else round(delay, 3),
    )


def attempt_routed(*, route: Route) -> None:
    """An attempt is about to call the target routing chose; a fallback is counted and logged."""
    if route.fallback:
        metrics.fallback_routed(from_provider=route.primary.provider, to_provider=route.target.provider)
        log_event(log, "fallback", from_target=str(route.primary), to_target=str(route.target), probe=route.probe)


def delivery_waited_for_circuit(
    *, provider: str, model: str, job_id: object = None, delay: float | None = None
) -> None:
    """A delivery found every target of its job's chain open-circuited: put back `delay` seconds later, its attempt
    budget untouched."""
    metrics.circuit_waited(provider=provider)
    log_event(
        log,
        "circuit_wait",
        job_id=job_id,
        provider=provider,
        model=model,
        delay_seconds=None if delay is None else round(delay, 3),
    )
