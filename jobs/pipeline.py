"""One attempt, start to end (DESIGN.md §2): the one place that decides what happens to it.

claim → rate limit → provider call with timeout → validate → the call's usage, in its own transaction as soon
as the provider answered (usage.recording: billed even if what follows fails) → record (the state change, the
attempt and a death's dead letter, in one transaction that this module owns, retried through a short Postgres
outage) → accounting (metrics).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from aipb.exceptions import DATABASE_UNAVAILABLE
from dlq.records import dead_letter
from jobs import accounting, admission, ratelimit, transitions
from jobs import tracing as job_tracing
from jobs.errors import BudgetExceeded, Classified, classify
from jobs.models import WAITING_STATUSES, AIJob, AttemptOutcome, JobAttempt, JobStatus
from jobs.providers import get_provider
from jobs.providers.base import CallContext, ProviderError
from jobs.routing import chains
from jobs.routing.chains import Route
from jobs.schema import PageInvalid, parse_page
from jobs.transitions import AttemptRecord
from usage.budgets import Limit, budget_enforce
from usage.recording import usage_record_durable
from webhooks.records import webhook_event_wanted, webhook_job_ended

log = logging.getLogger(__name__)


# What run_attempt returns for a delivery that ran no attempt (no token, or nothing to claim).
NOT_AN_ATTEMPT = ("throttled:", "skipped:", "waiting:")


def backoff_seconds(*, attempt_in_budget: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter; a provider's Retry-After wins over the cap, up to its own maximum."""
    ceiling = min(
        settings.AI_BACKOFF_MAX_SECONDS, settings.AI_BACKOFF_BASE_SECONDS * 2 ** max(0, attempt_in_budget - 1)
    )
    delay = random.uniform(0, ceiling)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, settings.AI_RETRY_AFTER_MAX_SECONDS))
    return delay


def run_attempt(job_id: str, rq_job_id: str, provider: str | None = None) -> str:
    """Run one delivery of a job. Returns what happened, for the RQ result and logs.

    With the provider carried by the delivery, the token is taken before any database work and
    the claim is the first statement; older deliveries without it read the row first.
    """
    start_ns = time.time_ns()  # the attempt's span begins with the delivery (jobs.tracing)
    if provider is None:
        job = _waiting_job(job_id, rq_job_id)
        if job is None:
            return "skipped: nothing to claim"
        provider = job.provider

    decision = ratelimit.acquire(provider=provider)
    if not decision.allowed:
        job = _waiting_job(job_id, rq_job_id)
        if job is None:
            return "skipped: nothing to claim"
        delay = _redelivery_delay(decision.wait_seconds)
        with transaction.atomic():
            rescheduled = transitions.delivery_replace(job, delay=delay)
        if rescheduled:
            accounting.delivery_throttled(provider=provider, job_id=job.id, delay=delay)
            job_tracing.throttled(job=job, wait_seconds=decision.wait_seconds, delay=delay)
            return f"throttled: re-scheduled in {delay:.2f}s"
        return "skipped: nothing to claim"

    claim = admission.attempt_claim(job_id=job_id, rq_job_id=rq_job_id)
    if claim is None:
        return "skipped: claimed elsewhere"
    job = claim.job
    route = chains.route_attempt(job=job)
    if route.target is None:
        return _wait_for_circuit(job, route)
    accounting.job_claimed(
        provider=job.provider,
        priority=job.priority,
        attempt=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
    )
    with job_tracing.attempt(job=job, start_ns=start_ns) as traced:
        return _attempt(job, route, traced, limits=claim.limits)


def _wait_for_circuit(job: AIJob, route: Route) -> str:
    """Every target of the job's chain has its circuit open: give the claim back (no attempt ran, none is spent)
    and look again when the soonest may be called, like a delivery waiting for a rate-limit token."""
    delay = _redelivery_delay(route.wait_seconds)
    with transaction.atomic():
        released = transitions.job_unclaim(job=job, delay=delay)
    if released:
        accounting.delivery_waited_for_circuit(provider=job.provider, model=job.model, job_id=job.id, delay=delay)
        job_tracing.circuit_waited(job=job, wait_seconds=route.wait_seconds, delay=delay)
    return f"waiting: every target's circuit is open; re-scheduled in {delay:.2f}s"


def _redelivery_delay(wait_seconds: float) -> float:
    """When a delivery that may not run yet (no rate-limit token, every circuit open) comes back: after the wait,
    with jitter so the waiting deliveries do not all return at once."""
    return max(wait_seconds, 0.05) + random.uniform(0, settings.AI_RATE_LIMIT_RETRY_SECONDS)


def _release_connection() -> None:
    """With a connection pool, nothing holds a connection during the provider call: the claim's is given back
    now and the recording takes one again (jobs.threaded_worker: threads x a 60 s call would otherwise need as
    many connections as threads). Without a pool the process keeps its one persistent connection."""
    if connections["default"].settings_dict["OPTIONS"].get("pool"):
        connections["default"].close()


def _waiting_job(job_id: str, rq_job_id: str) -> AIJob | None:
    job = AIJob.objects.filter(id=job_id).first()
    if job is None or job.status not in WAITING_STATUSES or job.rq_job_id != rq_job_id:
        return None
    return job


def _attempt(job: AIJob, route: Route, traced=job_tracing.NO_ATTEMPT, *, limits: list[Limit]) -> str:
    number = job.attempts
    target = route.target
    accounting.attempt_routed(route=route)
    traced.routed(route)
    started_at = timezone.now()
    started = time.monotonic()
    response = None
    page = None
    error: BaseException | None = None
    try:
        budget_enforce(limits, stage="pipeline")  # a job past its owner's limit (read by its claim) is never sent
        provider = get_provider(target.provider)
        ctx = CallContext(
            job_id=str(job.id), attempt=number, options=job.options, timeout=settings.AI_PROVIDER_TIMEOUT_SECONDS
        )
        _release_connection()
        with traced.call(provider=target.provider, model=target.model, prompt=job.prompt):
            response = provider.generate(prompt=job.prompt, model=target.model, ctx=ctx)
        with traced.step("aipb.validate"):
            page = parse_page(response.text)
    except Exception as exc:  # every failure is classified; none escapes to RQ
        error = exc
    seconds = time.monotonic() - started

    usage = response.usage if response is not None else getattr(error, "usage", None)
    request_id = response.request_id if response is not None else getattr(error, "request_id", None)
    validation_passed = None
    if response is not None:
        validation_passed = error is None
    record = AttemptRecord(
        number=number,
        started_at=started_at,
        finished_at=timezone.now(),
        latency_ms=int(seconds * 1000),
        usage=usage,
        request_id=request_id,
        validation_passed=validation_passed,
        provider=target.provider,
        model=target.model,
    )

    cost = None
    if usage is not None:
        with traced.step("aipb.usage_record"):
            recorded = usage_record_durable(
                job=job,
                attempt=number,
                usage=usage,
                at=record.finished_at,
                provider=target.provider,
                model=target.model,
            )
        accounting.usage_counted(
            provider=target.provider,
            model=target.model,
            usage=usage,
            cost=recorded.cost,
            priced=recorded.cost is not None or recorded.spooled,
        )
        cost = recorded.cost

    classified = None
    if error is not None:
        classified = classify(error)
        if not isinstance(error, (ProviderError, PageInvalid, BudgetExceeded)):
            log.exception("job %s attempt %s failed unexpectedly", job.id, number, exc_info=error)
    if not isinstance(error, BudgetExceeded):  # the target was not called: nothing to tell its circuit
        chains.attempt_report(route, error=classified, latency_ms=record.latency_ms)
    traced.call_ended(
        response=response,
        usage=usage,
        request_id=request_id,
        cost=cost,
        error_type=classified.type if classified is not None else None,
    )
    with traced.step("aipb.record"):
        result = _record_through_outage(job, record, page, classified)
    traced.ended(
        outcome=result.outcome,
        status=result.status,
        error_type=classified.type if classified is not None else None,
        delay=result.delay,
    )
    accounting.attempt_ended(
        provider=target.provider,
        model=target.model,
        record=record,
        seconds=seconds,
        outcome=result.outcome,
        error=classified,
        status=result.status,
        job_id=job.id,
        cost=cost,
        delay=result.delay,
        dead_letter_id=result.dead_letter_id,
        batch_id=job.batch_id,
    )
    if result.status is None:
        return f"abandoned: attempt {number} lost its lease"
    if classified is None:
        return "succeeded"
    return f"{result.status}: {classified.type}"


@dataclass(frozen=True)
class _Recorded:
    outcome: str | None  # of the attempt; None: lease recovery already counted it as abandoned
    status: str | None  # the job's new state; None: the job was taken back by lease recovery meanwhile
    delay: float | None = None  # before the retry, for the log
    dead_letter_id: int | None = None  # of a death, for the log


# A Postgres restart or failover mid-attempt: the attempt's end is written as soon as Postgres is back, within
# this long, instead of waiting out the lease (the provider's answer is already billed).
RECORD_RETRY_SECONDS = 30.0


def _record_through_outage(job, record, page, classified) -> _Recorded:
    deadline = time.monotonic() + RECORD_RETRY_SECONDS
    pause = 0.25
    while True:
        try:
            return _record(job, record, page, classified)
        except DATABASE_UNAVAILABLE as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("job %s attempt %s: Postgres unavailable (%s); recording again", job.id, record.number, exc)
            connections["default"].close()
            time.sleep(pause)
            pause = min(pause * 2, 4.0)
            try:
                done = _recorded_already(job, record)
            except DATABASE_UNAVAILABLE:
                continue
            if done is not None:
                return done


def _recorded_already(job: AIJob, record: AttemptRecord) -> _Recorded | None:
    """The commit may have gone through before the connection died: then the attempt's row exists. An
    abandoned row is lease recovery's (it took the job back while Postgres was away): recording again adds
    what only this worker knows to it (found by the Postgres-restart drill: the answered call's validation
    was missing from the row), so it does not count as done."""
    outcome = JobAttempt.objects.filter(job_id=job.id, number=record.number).values_list("outcome", flat=True).first()
    if outcome is None or outcome == AttemptOutcome.ABANDONED:
        return None
    return _Recorded(outcome=outcome, status=AIJob.objects.values_list("status", flat=True).get(id=job.id))


def _record(job: AIJob, record: AttemptRecord, page: dict | None, classified: Classified | None) -> _Recorded:
    """The attempt's end in one transaction: state change and attempt row (one statement), dead letter, outbox.
    When that one statement is all of it (a success or a retry with no event for the outbox) it is its own
    transaction, without a BEGIN and a COMMIT around it."""
    delay = None if classified is None else _retry_delay(job, classified)
    if classified is None:
        ending = JobStatus.SUCCEEDED
    else:
        ending = JobStatus.RETRYING if delay is not None else JobStatus.DEAD
    if ending == JobStatus.DEAD or webhook_event_wanted(job=job, status=ending):
        with transaction.atomic():
            return _record_end(job, record, page, classified, ending=ending, delay=delay)
    return _record_end(job, record, page, classified, ending=ending, delay=delay)


def _record_end(
    job: AIJob,
    record: AttemptRecord,
    page: dict | None,
    classified: Classified | None,
    *,
    ending: str,
    delay: float | None,
) -> _Recorded:
    if ending == JobStatus.SUCCEEDED:
        status = JobStatus.SUCCEEDED if transitions.job_succeed(job=job, record=record, page=page) else None
    elif ending == JobStatus.RETRYING:
        applied = transitions.job_retry_later(job=job, record=record, error=classified, delay=delay)
        status = JobStatus.RETRYING if applied else None
    else:
        status = JobStatus.DEAD if transitions.job_die(job=job, record=record, error=classified) else None
    if status is None:  # the attempt lost its lease: its row only (job_* wrote it with the change otherwise)
        outcome = AttemptOutcome.ABANDONED
        created = transitions.attempt_save(job=job, record=record, outcome=outcome, error=classified)
    else:
        outcome = AttemptOutcome.SUCCEEDED if classified is None else AttemptOutcome.FAILED
        created = True
    entry = None
    if status == JobStatus.DEAD:
        job.refresh_from_db()
        entry = dead_letter(job=job, classified=classified)
    if status is not None:
        webhook_job_ended(job=job, status=status)  # the outbox: the event commits (or rolls back) with the change
    counted = outcome == AttemptOutcome.ABANDONED and not created  # lease recovery recorded and counted it
    return _Recorded(
        outcome=None if counted else outcome,
        status=status,
        delay=delay if status == JobStatus.RETRYING else None,
        dead_letter_id=entry.id if entry is not None else None,
    )


def _retry_delay(job: AIJob, classified: Classified) -> float | None:
    if not classified.retryable or job.attempts_left <= 0:
        return None
    return backoff_seconds(attempt_in_budget=job.attempts - job.budget_base, retry_after=classified.retry_after)
