"""One attempt, start to end (DESIGN.md §2): the one place that decides what happens to it.

claim → rate limit → provider call with timeout → validate → record (attempt, usage,
and success, retry or death with its dead letter, in one transaction) → metrics.
"""

from __future__ import annotations

import logging
import random
import time

from django.conf import settings
from django.utils import timezone

from jobs import ratelimit, services
from jobs.errors import Classified, ErrorType, classify
from jobs.models import AIJob, JobStatus
from jobs.providers import get_provider
from jobs.providers.base import CallContext, ProviderError
from jobs.schema import PageInvalid, parse_page
from monitoring import metrics

log = logging.getLogger(__name__)


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
        delay = max(decision.wait_seconds, 0.05) + random.uniform(0, settings.AI_RATE_LIMIT_RETRY_SECONDS)
        if services.job_reschedule_delivery(job=job, rq_job_id=rq_job_id, delay=delay):
            metrics.rate_limited(provider=provider)
            return f"throttled: re-scheduled in {delay:.2f}s"
        return "skipped: nothing to claim"

    job = services.job_claim(job_id=job_id, rq_job_id=rq_job_id)
    if job is None:
        return "skipped: claimed elsewhere"
    return _attempt(job)


def _waiting_job(job_id: str, rq_job_id: str) -> AIJob | None:
    job = AIJob.objects.filter(id=job_id).first()
    if job is None or job.status not in (JobStatus.QUEUED, JobStatus.RETRYING) or job.rq_job_id != rq_job_id:
        return None
    return job


def _attempt(job: AIJob) -> str:
    number = job.attempts
    started_at = timezone.now()
    started = time.monotonic()
    response = None
    page = None
    error: BaseException | None = None
    try:
        provider = get_provider(job.provider)
        ctx = CallContext(
            job_id=str(job.id), attempt=number, options=job.options, timeout=settings.AI_PROVIDER_TIMEOUT_SECONDS
        )
        response = provider.generate(prompt=job.prompt, model=job.model, ctx=ctx)
        page = parse_page(response.text)
    except Exception as exc:  # every failure is classified; none escapes to RQ
        error = exc
    seconds = time.monotonic() - started

    usage = response.usage if response is not None else getattr(error, "usage", None)
    request_id = response.request_id if response is not None else getattr(error, "request_id", None)
    validation_passed = None
    if response is not None:
        validation_passed = error is None
    record = services.AttemptRecord(
        number=number,
        started_at=started_at,
        finished_at=timezone.now(),
        latency_ms=int(seconds * 1000),
        usage=usage,
        request_id=request_id,
        validation_passed=validation_passed,
    )

    if error is None:
        result = services.attempt_succeeded(job=job, record=record, page=page)
        classified = None
    else:
        classified = classify(error)
        if not isinstance(error, (ProviderError, PageInvalid)):
            log.exception("job %s attempt %s failed unexpectedly", job.id, number, exc_info=error)
        result = services.attempt_failed(
            job=job, record=record, error=classified, retry_delay=_retry_delay(job, classified)
        )

    _observe(job, record, seconds, classified, result)
    if not result.applied:
        return f"abandoned: attempt {number} lost its lease"
    if classified is None:
        return "succeeded"
    return f"{result.status}: {classified.type}"


def _retry_delay(job: AIJob, classified: Classified) -> float | None:
    used = job.attempts - job.budget_base
    if not classified.retryable or used >= job.max_attempts:
        return None
    return backoff_seconds(attempt_in_budget=used, retry_after=classified.retry_after)


def _observe(job: AIJob, record, seconds: float, classified: Classified | None, result) -> None:
    provider, model = job.provider, job.model
    outcome = "abandoned" if not result.applied else ("succeeded" if classified is None else "failed")
    metrics.attempt_finished(
        provider=provider,
        model=model,
        outcome=outcome,
        seconds=seconds,
        error_type=classified.type if classified else "",
        validation_passed=record.validation_passed,
    )
    if record.usage is not None:
        metrics.usage_recorded(
            provider=provider,
            model=model,
            prompt=record.usage.prompt_tokens,
            completion=record.usage.completion_tokens,
            cached=record.usage.cached_tokens,
            cost=result.cost,
        )
    if not result.applied:
        return
    if result.status == JobStatus.RETRYING:
        metrics.retry_scheduled(provider=provider, model=model)
    elif result.status in (JobStatus.SUCCEEDED, JobStatus.DEAD):
        metrics.job_finished(provider=provider, model=model, status=result.status)


__all__ = ["run_attempt", "backoff_seconds", "ErrorType"]
