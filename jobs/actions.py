"""Operator actions on jobs: cancel, retry, delete, and retry in bulk (the API, the admin and the commands).

Each loads the job (an owner sees only their own), asks jobs.transitions for the change, and records what
goes with it: a retried job's dead letters are resolved, a cancel is counted by jobs.accounting, and a change
to someone else's job is written to the audit trail (an owner acting on their own job is not audited).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from aipb.exceptions import Conflict, InvalidInput, NotFound
from audit.models import AuditAction
from audit.records import Actor, audit_record, capped, reason_checked
from dlq.records import dlq_mark_retried_for_job
from jobs import accounting, transitions
from jobs.errors import ErrorType
from jobs.models import AIJob, JobStatus


def _get(job_id: object, *, owner: AbstractBaseUser | None = None) -> AIJob:
    qs = AIJob.objects.all()
    if owner is not None:
        qs = qs.filter(owner=owner)
    try:
        return qs.get(id=job_id)
    except (AIJob.DoesNotExist, ValueError, TypeError, ValidationError):  # ValidationError: a malformed UUID
        raise NotFound(f"job {job_id} not found") from None


def _audit(job: AIJob, *, actor: Actor | None, action: str, reason: str, status: str) -> None:
    """Called after the change won, in its transaction. No actor: an internal call (DLQ retry, bulk retry),
    recorded by its caller."""
    if actor is None or actor.owns(job.owner_id):
        return
    details = {
        "owner": job.owner.get_username(),
        "status_before": status,
        "provider": job.provider,
        "model": job.model,
        "created_at": job.created_at,
    }
    audit_record(actor=actor, action=action, target_type="job", target_id=job.id, reason=reason, details=details)


@transaction.atomic
def job_cancel(
    *, job_id: object, owner: AbstractBaseUser | None = None, actor: Actor | None = None, reason: str = ""
) -> AIJob:
    """queued|retrying → canceled. The RQ job is removed after commit; if it runs first it finds nothing to claim."""
    reason = reason_checked(reason)
    job = _get(job_id, owner=owner)
    before = job.status
    if not transitions.job_cancel_waiting(job=job):
        job.refresh_from_db()
        raise Conflict(f"job {job.id} is {job.status}; only queued or retrying jobs can be canceled")
    transaction.on_commit(
        partial(accounting.jobs_canceled, [(job.provider, job.model)], batch_ids=[job.batch_id] if job.batch_id else [])
    )
    _audit(job, actor=actor, action=AuditAction.JOB_CANCEL, reason=reason, status=before)
    job.refresh_from_db()
    return job


@transaction.atomic
def job_retry(
    *, job_id: object, owner: AbstractBaseUser | None = None, actor: Actor | None = None, reason: str = ""
) -> AIJob:
    """dead|canceled → queued with a fresh budget of max_attempts further attempts; its dead letters resolved."""
    reason = reason_checked(reason)
    job = _get(job_id, owner=owner)
    before = job.status
    if not transitions.job_requeue(job=job):
        job.refresh_from_db()
        raise Conflict(f"job {job.id} is {job.status}; only dead or canceled jobs can be retried")
    dlq_mark_retried_for_job(job_id=job.id, at=job.updated_at)
    _audit(job, actor=actor, action=AuditAction.JOB_RETRY, reason=reason, status=before)
    return job


@transaction.atomic
def job_delete(
    *, job_id: object, owner: AbstractBaseUser | None = None, actor: Actor | None = None, reason: str = ""
) -> None:
    reason = reason_checked(reason)
    job = _get(job_id, owner=owner)
    deleted, _ = AIJob.objects.filter(id=job.id).exclude(status=JobStatus.RUNNING).delete()
    if not deleted:
        raise Conflict(f"job {job.id} is running; cancel is not possible and delete must wait until it finishes")
    transitions.delete_delivery_on_commit(job.rq_job_id)
    if job.batch_id is not None:  # it may have been the last of its batch still waiting
        transaction.on_commit(partial(accounting.batches_settle, [job.batch_id]))
    # the row is gone; the entry keeps what identified it
    _audit(job, actor=actor, action=AuditAction.JOB_DELETE, reason=reason, status=job.status)


BULK_RETRY_STATUSES = (JobStatus.DEAD, JobStatus.CANCELED)


@dataclass
class BulkRetryReport:
    matched: int  # jobs the filter selected
    retried: list[str]  # put back on the queue
    conflicted: list[str]  # changed state meanwhile (retried by someone else, deleted); left alone
    dry_run: bool = False

    def as_dict(self) -> dict:
        return {
            "matched": self.matched,
            "retried": self.retried,
            "conflicted": self.conflicted,
            "dry_run": self.dry_run,
        }


def jobs_retry_bulk(
    *,
    status: str = JobStatus.DEAD,
    error_type: str | None = None,
    since: datetime | None = None,
    dry_run: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    actor: Actor | None = None,
    reason: str = "",
) -> BulkRetryReport:
    """Retry every job in `status` (dead or canceled), optionally of one error type and finished since a time.

    Each job goes through job_retry in its own transaction (a fresh attempt budget, its dead letters
    resolved, enqueued on commit), so a job that changed meanwhile is counted as a conflict, never retried twice.
    One audit entry records the whole action once it retried anything.
    """
    reason = reason_checked(reason)
    if status not in BULK_RETRY_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(BULK_RETRY_STATUSES)}")
    if error_type is not None and error_type not in ErrorType.values:
        raise InvalidInput(f"error type must be one of {', '.join(ErrorType.values)}")
    qs = AIJob.objects.filter(status=status)
    if error_type is not None:
        qs = qs.filter(error_type=error_type)
    if since is not None:
        qs = qs.filter(finished_at__gte=since)
    job_ids = list(qs.order_by("finished_at", "id").values_list("id", flat=True))
    report = BulkRetryReport(matched=len(job_ids), retried=[], conflicted=[], dry_run=dry_run)
    if dry_run:
        report.retried = [str(job_id) for job_id in job_ids]
        return report
    for done, job_id in enumerate(job_ids, start=1):
        try:
            job_retry(job_id=job_id)
            report.retried.append(str(job_id))
        except (Conflict, NotFound):
            report.conflicted.append(str(job_id))
        if on_progress is not None:
            on_progress(done, len(job_ids))
    if actor is not None and report.retried:
        with transaction.atomic():
            audit_record(
                actor=actor,
                action=AuditAction.JOBS_RETRY_BULK,
                target_type="job",
                reason=reason,
                details={
                    "status": status,
                    "error_type": error_type,
                    "since": since,
                    "matched": report.matched,
                    "retried": len(report.retried),
                    "conflicted": len(report.conflicted),
                    "job_ids": capped(report.retried),
                },
            )
    return report
