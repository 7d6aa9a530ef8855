"""DLQ operator actions: retry (one, or every open entry matching filters) and discard.

Orchestration: a retry puts the job back through jobs.actions.job_retry, which resolves the job's entries.
Every change an operator makes is written to the audit trail (one entry for a bulk retry) when the
interface says who acts (``actor``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from aipb.exceptions import Conflict, NotFound, ServiceError
from audit.models import AuditAction
from audit.records import Actor, audit_record, capped, reason_checked
from dlq.models import DeadLetter, DeadLetterStatus
from dlq.selectors import dlq_filter, entry_pk
from jobs.actions import job_retry
from jobs.models import AIJob

log = logging.getLogger(__name__)

BULK_RETRY_BATCH = 200


@transaction.atomic
def dlq_retry(*, entry_id: object, actor: Actor | None = None, reason: str = "") -> tuple[DeadLetter, AIJob]:
    """Put an open entry's job back on the queue with a fresh attempt budget; the entry becomes retried."""
    reason = reason_checked(reason)
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
    if actor is not None:
        audit_record(
            actor=actor,
            action=AuditAction.DLQ_RETRY,
            target_type="dead_letter",
            target_id=entry.id,
            reason=reason,
            details={"job_id": job.id, "owner": job.owner.get_username(), "error_type": entry.error_type},
        )
    return entry, job


@dataclass
class BulkRetryResult:
    retried: int
    skipped: int  # matched when listed, then no longer retryable (resolved meanwhile, job deleted or not dead)

    def as_dict(self) -> dict:
        return {"retried": self.retried, "skipped": self.skipped}


def dlq_retry_bulk(
    *,
    filters: dict | None = None,
    actor: Actor | None = None,
    reason: str = "",
    on_progress: Callable[[int, int], None] | None = None,
) -> BulkRetryResult:
    """Retry every open entry matching the filters, each in its own transaction (one bad entry stops nothing).
    on_progress(done, total) after each entry (the command's progress lines)."""
    reason = reason_checked(reason)
    filters = {key: value for key, value in (filters or {}).items() if key != "status"}
    open_entries = dlq_filter(DeadLetter.objects.filter(status=DeadLetterStatus.OPEN), filters)
    total = open_entries.count() if on_progress is not None else 0
    result = BulkRetryResult(retried=0, skipped=0)
    retried: list[int] = []
    last_id = 0
    while True:
        batch = list(open_entries.filter(id__gt=last_id).order_by("id").values_list("id", flat=True)[:BULK_RETRY_BATCH])
        for pk in batch:
            try:
                dlq_retry(entry_id=pk)
                result.retried += 1
                retried.append(pk)
            except ServiceError as exc:
                log.info("bulk retry skipped dead letter %s: %s", pk, exc.message)
                result.skipped += 1
            if on_progress is not None:
                on_progress(result.retried + result.skipped, max(total, result.retried + result.skipped))
        if len(batch) < BULK_RETRY_BATCH:
            break
        last_id = batch[-1]
    if actor is not None and retried:
        with transaction.atomic():
            audit_record(
                actor=actor,
                action=AuditAction.DLQ_RETRY_BULK,
                target_type="dead_letter",
                reason=reason,
                details={**result.as_dict(), "filters": filters, "entry_ids": capped(retried)},
            )
    return result


@transaction.atomic
def dlq_discard(*, entry_id: object, actor: Actor | None = None, reason: str = "") -> DeadLetter:
    """open → discarded: the operator has seen it and decided the job stays dead."""
    reason = reason_checked(reason)
    pk = entry_pk(entry_id)
    updated = DeadLetter.objects.filter(id=pk, status=DeadLetterStatus.OPEN).update(
        status=DeadLetterStatus.DISCARDED, resolved_at=timezone.now()
    )
    entry = DeadLetter.objects.filter(id=pk).first()
    if entry is None:
        raise NotFound(f"dead letter {pk} not found")
    if not updated:
        raise Conflict(f"dead letter {pk} is {entry.status}; only open entries can be discarded")
    if actor is not None:
        audit_record(
            actor=actor,
            action=AuditAction.DLQ_DISCARD,
            target_type="dead_letter",
            target_id=entry.id,
            reason=reason,
            details={"job_id": entry.job_uuid, "error_type": entry.error_type},
        )
    return entry
