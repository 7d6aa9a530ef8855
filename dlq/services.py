"""Writes for the dead-letter queue: capture (called by the pipeline), retry, discard, retention."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from aipb.exceptions import Conflict, NotFound, ServiceError
from dlq.models import DeadLetter, DeadLetterStatus
from dlq.selectors import dlq_filter, entry_pk
from jobs.errors import Classified
from jobs.models import AIJob, JobAttempt

log = logging.getLogger(__name__)

# Retention work done after each new entry: at most this many deletes, so a backlog (after
# AI_DLQ_MAX_ENTRIES was lowered, say) drains a little with every death instead of all at once.
PRUNE_PER_INSERT = 20
# `dlq prune` deletes in transactions of this many rows.
PRUNE_BATCH = 1000
BULK_RETRY_BATCH = 200


def _snapshot(job: AIJob) -> dict:
    attempts = JobAttempt.objects.filter(job_id=job.id).order_by("number")
    return {
        "job": {
            "id": str(job.id),
            "owner": job.owner.get_username() if job.owner_id else None,
            "provider": job.provider,
            "model": job.model,
            "prompt": job.prompt,
            "options": job.options,
            "priority": job.priority,
            "max_attempts": job.max_attempts,
            "created_at": job.created_at.isoformat() if job.created_at else None,
        },
        "attempt_history": [
            {
                "number": a.number,
                "outcome": a.outcome,
                "error_type": a.error_type,
                "error_message": a.error_message,
                "started_at": a.started_at.isoformat() if a.started_at else None,
                "finished_at": a.finished_at.isoformat() if a.finished_at else None,
                "latency_ms": a.latency_ms,
                "prompt_tokens": a.prompt_tokens,
                "completion_tokens": a.completion_tokens,
                "cached_tokens": a.cached_tokens,
                "provider_request_id": a.provider_request_id,
            }
            for a in attempts
        ],
    }


def dead_letter(*, job: AIJob, classified: Classified) -> DeadLetter:
    """Called by the pipeline in the same transaction that marks the job dead."""
    assert transaction.get_connection().in_atomic_block, "dead_letter must run inside the job's transaction"
    entry = DeadLetter.objects.create(
        job=job,
        job_uuid=job.id,
        error_type=classified.type,
        error_message=classified.message,
        retryable=classified.retryable,
        attempts=job.attempts,
        provider=job.provider,
        model=job.model,
        payload=_snapshot(job),
    )
    # Retention runs after the death commits: it cannot slow down or roll back the death itself.
    transaction.on_commit(_prune_after_insert)
    return entry


def dlq_mark_retried_for_job(*, job_id: object, at) -> int:
    """A job put back on the queue resolves its open entries."""
    return DeadLetter.objects.filter(job_uuid=job_id, status=DeadLetterStatus.OPEN).update(
        status=DeadLetterStatus.RETRIED, resolved_at=at
    )


# --- operator actions ---


@transaction.atomic
def dlq_retry(*, entry_id: object) -> tuple[DeadLetter, AIJob]:
    """Put an open entry's job back on the queue with a fresh attempt budget; the entry becomes retried."""
    from jobs.services import job_retry

    pk = entry_pk(entry_id)
    # The row lock makes two concurrent retries of one entry queue the job once: the second sees `retried`.
    entry = DeadLetter.objects.select_for_update().filter(id=pk).first()
    if entry is None:
        raise NotFound(f"dead letter {pk} not found")
    if entry.status != DeadLetterStatus.OPEN:
        raise Conflict(f"dead letter {pk} is {entry.status}; only open entries can be retried")
    if entry.job_id is None:
        raise Conflict(
            f"dead letter {pk} cannot be retried: its job {entry.job_uuid} was deleted; discard the entry instead"
        )
    job = job_retry(job_id=entry.job_id)  # resolves every open entry of the job, this one included
    DeadLetter.objects.filter(id=pk, status=DeadLetterStatus.OPEN).update(
        status=DeadLetterStatus.RETRIED, resolved_at=timezone.now()
    )
    entry.refresh_from_db()
    return entry, job


@dataclass
class BulkRetryResult:
    retried: int
    skipped: int  # matched when listed, then no longer retryable (resolved meanwhile, job deleted or not dead)

    def as_dict(self) -> dict:
        return {"retried": self.retried, "skipped": self.skipped}


def dlq_retry_bulk(*, filters: dict | None = None) -> BulkRetryResult:
    """Retry every open entry matching the filters, each in its own transaction (one bad entry stops nothing)."""
    filters = {key: value for key, value in (filters or {}).items() if key != "status"}
    open_entries = dlq_filter(DeadLetter.objects.filter(status=DeadLetterStatus.OPEN), filters)
    result = BulkRetryResult(retried=0, skipped=0)
    last_id = 0
    while True:
        batch = list(open_entries.filter(id__gt=last_id).order_by("id").values_list("id", flat=True)[:BULK_RETRY_BATCH])
        for pk in batch:
            try:
                dlq_retry(entry_id=pk)
                result.retried += 1
            except ServiceError as exc:
                log.info("bulk retry skipped dead letter %s: %s", pk, exc.message)
                result.skipped += 1
        if len(batch) < BULK_RETRY_BATCH:
            return result
        last_id = batch[-1]


@transaction.atomic
def dlq_discard(*, entry_id: object) -> DeadLetter:
    """open → discarded: the operator has seen it and decided the job stays dead."""
    pk = entry_pk(entry_id)
    updated = DeadLetter.objects.filter(id=pk, status=DeadLetterStatus.OPEN).update(
        status=DeadLetterStatus.DISCARDED, resolved_at=timezone.now()
    )
    entry = DeadLetter.objects.filter(id=pk).first()
    if entry is None:
        raise NotFound(f"dead letter {pk} not found")
    if not updated:
        raise Conflict(f"dead letter {pk} is {entry.status}; only open entries can be discarded")
    return entry


# --- retention ---


@dataclass
class PruneResult:
    expired: int = 0  # older than AI_DLQ_MAX_AGE_DAYS
    over_cap: int = 0  # beyond the newest AI_DLQ_MAX_ENTRIES

    @property
    def deleted(self) -> int:
        return self.expired + self.over_cap

    def as_dict(self) -> dict:
        return {"deleted": self.deleted, "expired": self.expired, "over_cap": self.over_cap}


def _delete(ids: list[int]) -> int:
    if not ids:
        return 0
    # DeadLetter has no dependants: one DELETE ... WHERE id IN (...); the job rows are never touched.
    deleted, _ = DeadLetter.objects.filter(id__in=ids).delete()
    return deleted


@transaction.atomic
def dlq_enforce_retention(*, limit: int) -> PruneResult:
    """Delete at most `limit` entries, each query walking an index for at most max_entries + limit rows.

    First entries older than AI_DLQ_MAX_AGE_DAYS (when set), then the excess over
    AI_DLQ_MAX_ENTRIES: resolved entries (retried, discarded) oldest first, then, only if
    that is not enough, open ones oldest first.
    """
    result = PruneResult()
    ordered = DeadLetter.objects.order_by("created_at", "id").values_list("id", flat=True)
    if settings.AI_DLQ_MAX_AGE_DAYS:
        cutoff = timezone.now() - timedelta(days=settings.AI_DLQ_MAX_AGE_DAYS)
        result.expired = _delete(list(ordered.filter(created_at__lt=cutoff)[:limit]))
    budget = limit - result.expired
    if budget <= 0:
        return result
    cap = settings.AI_DLQ_MAX_ENTRIES
    newest_first = DeadLetter.objects.order_by("-created_at", "-id").values_list("id", flat=True)
    excess = len(newest_first[cap : cap + budget])
    if not excess:
        return result
    victims = list(ordered.exclude(status=DeadLetterStatus.OPEN)[:excess])
    if len(victims) < excess:
        victims += list(ordered.filter(status=DeadLetterStatus.OPEN)[: excess - len(victims)])
    result.over_cap = _delete(victims)
    return result


def _prune_after_insert() -> None:
    try:
        dlq_enforce_retention(limit=PRUNE_PER_INSERT)
    except Exception:  # retention is housekeeping; `dlq prune` catches up
        log.exception("dead-letter retention after insert failed")


def dlq_prune(*, batch: int = PRUNE_BATCH) -> PruneResult:
    """Apply retention fully (the `dlq prune` command, or a periodic job), one bounded transaction at a time."""
    total = PruneResult()
    while True:
        step = dlq_enforce_retention(limit=batch)
        total.expired += step.expired
        total.over_cap += step.over_cap
        if step.deleted < batch:
            return total
