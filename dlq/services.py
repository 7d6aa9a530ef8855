"""Writes for the dead-letter queue."""

from __future__ import annotations

from django.db import transaction

from dlq.models import DeadLetter
from jobs.errors import Classified
from jobs.models import AIJob, JobAttempt


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
    return entry


def dlq_mark_retried_for_job(*, job_id: object, at) -> int:
    """A job put back on the queue resolves its open entries."""
    from dlq.models import DeadLetterStatus

    return DeadLetter.objects.filter(job_uuid=job_id, status=DeadLetterStatus.OPEN).update(
        status=DeadLetterStatus.RETRIED, resolved_at=at
    )
