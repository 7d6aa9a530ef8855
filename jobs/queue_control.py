"""Queue control for operators: status, pause and resume every worker, clearing (the API, the admin's
operations page and `manage.py queue`).

Pause raises RQ's suspension flag (jobs.queues): running jobs finish, submissions keep queuing, and
jobs.worker hands back a job an idle worker popped after the pause.

Clearing waiting or delayed deliveries cancels their jobs first (jobs.transitions, conditional on the
delivery, so a job a worker claimed meanwhile is left alone) and then takes the deliveries out of Redis,
only those still there, so Postgres and Redis agree afterwards. Clearing failed or completed empties RQ's
registries only: job rows and dead letters stay.

Each change an operator makes (one that changed something: a second pause is not one) is written to the
audit trail when the interface says who acts (``actor``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from aipb.exceptions import InvalidInput
from aipb.redis_client import get_redis
from audit.models import AuditAction
from audit.records import Actor, audit_record, capped, reason_checked
from jobs import accounting, fairness, queues, transitions
from jobs.models import AIJob, JobStatus
from jobs.queues import QUEUE_ORDER, QUEUE_STATUSES
from jobs.redis_state import workers_list

log = logging.getLogger(__name__)

STATUSES = QUEUE_STATUSES
CLEARABLE = ("waiting", "delayed", "failed", "completed")
CLEAR_BATCH = 500


def _job_counts() -> dict:
    # Postgres' view of the same work, to compare with Redis'; only non-final rows (an index scan).
    counts = {str(s): 0 for s in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.RETRYING)}
    rows = AIJob.objects.filter(status__in=list(counts)).values("status").annotate(n=Count("id")).order_by()
    for row in rows:
        counts[row["status"]] = row["n"]
    return counts


def queue_status() -> dict:
    """Sizes per status for each queue and in total, whether workers are paused, the workers.

    The same object for `GET /api/ai/queue`, `manage.py queue status --json` and the operations page.
    """
    conn = get_redis()
    per_queue = queues.queue_sizes(conn)
    paused = queues.is_paused(conn)
    workers = workers_list(conn)
    closed = queues.intake_closed_info(fresh=True)
    return {
        "paused": paused,
        **(queues.pause_info(conn) if paused else {"paused_by": "", "paused_at": None, "reason": ""}),
        "intake": {
            "open": closed is None,
            "closed_by": (closed or {}).get("by", ""),
            "closed_at": (closed or {}).get("at"),
            "reason": (closed or {}).get("reason", ""),
        },
        "totals": queues.sizes_total(per_queue),
        "queues": [{"name": name, **per_queue[name]} for name in QUEUE_ORDER],
        "jobs": _job_counts(),
        "workers": workers,
        "worker_count": len(workers),
    }


def queue_is_paused() -> bool:
    return queues.is_paused()


def _said(by: str, reason: str = "") -> str:
    # Operator-typed text goes into the log as one quoted value: a newline in a reason cannot forge a line.
    return f"{by or 'unknown'!r}" + (f" reason={reason!r}" if reason else "")


def _audit(actor: Actor | None, action: str, *, reason: str = "", details: dict | None = None) -> None:
    if actor is not None:
        audit_record(actor=actor, action=action, target_type="queue", reason=reason, details=details)


def queue_pause(*, by: str = "", reason: str = "", actor: Actor | None = None) -> dict:
    """Stop every worker from taking jobs (running ones finish). Idempotent: a second pause keeps the first's info.
    `by` is shown in queue status; an actor's label stands for it."""
    by = actor.label if actor is not None else by
    if queues.pause_set(get_redis(), by=by, at=timezone.now().isoformat(), reason=reason_checked(reason)):
        log.warning("queue paused by %s", _said(by, reason))
        _audit(actor, AuditAction.QUEUE_PAUSE, reason=reason)
    return queue_status()


def queue_resume(*, by: str = "", actor: Actor | None = None) -> dict:
    by = actor.label if actor is not None else by
    if queues.pause_clear(get_redis()):
        log.warning("queue resumed by %s", _said(by))
        _audit(actor, AuditAction.QUEUE_RESUME)
    return queue_status()


def queue_intake(*, open: bool, by: str = "", reason: str = "", actor: Actor | None = None) -> dict:  # noqa: A002
    """Close intake (submissions answer 503 intake_closed; workers keep draining) or open it again.
    Idempotent: closing twice keeps the first close's who/when/why."""
    by = actor.label if actor is not None else by
    changed = queues.intake_set(
        get_redis(), closed=not open, by=by, at=timezone.now().isoformat(), reason=reason_checked(reason)
    )
    if changed:
        log.warning("intake %s by %s", "opened" if open else "closed", _said(by, reason))
        _audit(actor, AuditAction.QUEUE_INTAKE_OPEN if open else AuditAction.QUEUE_INTAKE_CLOSE, reason=reason)
    return queue_status()


@dataclass
class ClearReport:
    status: str
    removed: int = 0  # RQ jobs taken out of Redis
    canceled: list[str] = field(default_factory=list)  # AIJob ids canceled (waiting and delayed only)

    def as_dict(self) -> dict:
        return {"status": self.status, "removed": self.removed, "canceled": self.canceled}


@transaction.atomic
def _cancel_deliveries(rq_job_ids: list[str]) -> list[str]:
    canceled = transitions.jobs_cancel_deliveries(rq_job_ids=rq_job_ids)
    job_ids = [job_id for job_id, _, _ in canceled]
    # the batches some of them belong to: each may now be finished (a queue clear is rare; one more query)
    batch_ids = set(AIJob.objects.filter(id__in=job_ids, batch__isnull=False).values_list("batch_id", flat=True))
    transaction.on_commit(
        partial(accounting.jobs_canceled, [(provider, model) for _, provider, model in canceled], batch_ids=batch_ids)
    )
    return job_ids


def queue_clear(
    *,
    status: str,
    on_progress: Callable[[int, int], None] | None = None,
    actor: Actor | None = None,
    reason: str = "",
) -> ClearReport:
    """Empty one status on every queue. waiting/delayed cancel their jobs; failed/completed only drop RQ's records."""
    reason = reason_checked(reason)
    if status not in CLEARABLE:
        raise InvalidInput(f"status must be one of {', '.join(CLEARABLE)}")
    conn = get_redis()
    report = ClearReport(status=status)
    todo: list[tuple[str, str, list[str], str]] = []  # queue name, key of its list or registry, ids, kind
    for name in QUEUE_ORDER:
        if status == "waiting":
            todo.append((name, queues.list_key(name), queues.waiting_ids(name), "list"))
        else:
            todo.append((name, queues.registry_key(name, status), queues.registry_ids(name, status), "zset"))
    if status == "waiting":  # deliveries held back by their owner's fair share wait too, outside the queues
        todo.extend(("", key, ids, "zset") for key, ids in fairness.held_deliveries(conn))
    total = sum(len(ids) for _, _, ids, _ in todo)
    done = 0
    for name, key, ids, kind in todo:
        for batch in queues.batched(ids, CLEAR_BATCH):
            if status in ("waiting", "delayed"):
                # Postgres first: a delivery that vanishes from Redis between the two steps was
                # taken by a worker, which then finds its job canceled and claims nothing.
                report.canceled.extend(_cancel_deliveries(batch))
            taken = queues.take_out(conn, key, batch, kind=kind)
            if status == "delayed" and len(taken) < len(batch):
                # the scheduler moved some to the queue meanwhile: take those out of the queue too
                moved = [rq_id for rq_id in batch if rq_id not in set(taken)]
                taken += queues.take_out(conn, queues.list_key(name), moved, kind="list")
            queues.deliveries_delete(conn, taken)
            report.removed += len(taken)
            done += len(batch)
            if on_progress is not None:
                on_progress(done, total)
    if status in ("waiting", "delayed"):
        log.warning(
            "queue clear %s: %d jobs canceled, %d deliveries removed", status, len(report.canceled), report.removed
        )
    if report.removed or report.canceled:
        with transaction.atomic():
            _audit(
                actor,
                AuditAction.QUEUE_CLEAR,
                reason=reason,
                details={
                    "status": status,
                    "removed": report.removed,
                    "canceled": len(report.canceled),
                    "job_ids": capped(report.canceled),
                },
            )
    return report
