"""Dead-letter records: capture (in the transaction that kills a job), resolution on retry, retention.

A leaf: it knows job rows, not how jobs move; putting a job back on the queue is dlq.services (orchestration)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from dlq.models import DeadLetter, DeadLetterStatus
from jobs.errors import Classified
from jobs.models import ATTEMPT_FIELDS, AIJob, JobAttempt

log = logging.getLogger(__name__)

# Retention work done after each new entry: at most this many deletes, so a backlog (after
# AI_DLQ_MAX_ENTRIES was lowered, say) drains a little with every death instead of all at once.
PRUNE_PER_INSERT = 20
# `dlq prune` deletes in transactions of this many rows.
PRUNE_BATCH = 1000


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
            {name: _jsonable(getattr(attempt, name)) for name in ATTEMPT_FIELDS} for attempt in attempts
        ],
    }


def _jsonable(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


def dead_letter(*, job: AIJob, classified: Classified) -> DeadLetter:
    """Called in the same transaction that marks the job dead (the pipeline, lease recovery)."""
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
