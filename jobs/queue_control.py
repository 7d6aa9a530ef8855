"""Queue control: pause and resume every worker, queue sizes per status, clearing.

Pause is RQ's suspension flag in Redis (`rq:suspended`, the one `rq suspend` and django-rq's
`rqsuspend` set): every worker on every host checks it before taking a job, so a pause reaches
all of them and survives worker restarts (not a Redis flush). Running jobs finish; submissions
keep queuing. aipb.worker also hands back a job an idle worker popped after the pause.

Clearing waiting or delayed deliveries cancels their jobs first (conditional UPDATEs, so a job a
worker claimed meanwhile is left alone) and then takes the deliveries out of Redis, only those
still there, so Postgres and Redis agree afterwards. Clearing failed or completed empties RQ's
registries only: job rows and dead letters stay.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

from django.db import transaction
from django.db.models import Count
from django.utils import timezone
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.suspension import is_suspended, resume, suspend
from rq.worker import Worker

from aipb.exceptions import InvalidInput
from aipb.redis_client import get_redis
from jobs.models import WAITING_STATUSES, AIJob, JobStatus
from jobs.queues import QUEUE_ORDER, all_queues

log = logging.getLogger(__name__)

STATUSES = ("waiting", "active", "delayed", "completed", "failed")
CLEARABLE = ("waiting", "delayed", "failed", "completed")
PAUSE_INFO_KEY = "aipb:queue:paused"  # who paused, when and why; RQ's own flag carries no such thing
CLEAR_BATCH = 500


# --- reads ---


def _live_count(conn, key: str, now: float) -> int:
    # Entries scored at or before now have expired (RQ drops them on its next cleanup); a read
    # must not run that cleanup itself, as the started registry's moves abandoned jobs.
    return conn.zcount(key, f"({now}", "+inf")


def _pause_info(conn) -> dict:
    raw = conn.get(PAUSE_INFO_KEY)
    try:
        info = json.loads(raw) if raw else {}
    except ValueError:
        info = {}
    return {"paused_by": info.get("by", ""), "paused_at": info.get("at"), "reason": info.get("reason", "")}


def _workers(conn) -> list[dict]:
    out = []
    for worker in Worker.all(connection=conn):
        queue_names = worker.queue_names()
        if not set(queue_names) & set(QUEUE_ORDER):
            continue
        out.append(
            {
                "name": worker.name,
                "hostname": worker.hostname or "",
                "pid": worker.pid,
                "state": worker.get_state(),
                "queues": queue_names,
                "current_job": worker.get_current_job_id() or None,
                "successful_jobs": worker.successful_job_count,
                "failed_jobs": worker.failed_job_count,
                "last_heartbeat": worker.last_heartbeat.isoformat() if worker.last_heartbeat else None,
            }
        )
    return sorted(out, key=lambda w: (w["hostname"], w["name"]))


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
    now = time.time()
    queues = []
    totals = dict.fromkeys(STATUSES, 0)
    for queue in all_queues():
        sizes = {
            "waiting": queue.count,
            "active": _live_count(conn, StartedJobRegistry(queue=queue).key, now),
            "delayed": conn.zcard(ScheduledJobRegistry(queue=queue).key),
            "completed": _live_count(conn, FinishedJobRegistry(queue=queue).key, now),
            "failed": _live_count(conn, FailedJobRegistry(queue=queue).key, now),
        }
        for key, value in sizes.items():
            totals[key] += value
        queues.append({"name": queue.name, **sizes})
    paused = bool(is_suspended(conn))
    workers = _workers(conn)
    return {
        "paused": paused,
        **(_pause_info(conn) if paused else {"paused_by": "", "paused_at": None, "reason": ""}),
        "totals": totals,
        "queues": queues,
        "jobs": _job_counts(),
        "workers": workers,
        "worker_count": len(workers),
    }


def queue_is_paused() -> bool:
    return bool(is_suspended(get_redis()))


# --- pause / resume ---


def queue_pause(*, by: str = "", reason: str = "") -> dict:
    """Stop every worker from taking jobs (running ones finish). Idempotent: a second pause keeps the first's info."""
    if len(reason) > 500:
        raise InvalidInput("reason must be at most 500 characters")
    conn = get_redis()
    was_paused = bool(is_suspended(conn))
    suspend(conn)
    info = json.dumps({"by": by, "at": timezone.now().isoformat(), "reason": reason})
    conn.set(PAUSE_INFO_KEY, info, nx=was_paused)
    if not was_paused:
        log.warning("queue paused by %s%s", by or "unknown", f": {reason}" if reason else "")
    return queue_status()


def queue_resume(*, by: str = "") -> dict:
    conn = get_redis()
    with conn.pipeline() as pipe:
        resume(pipe)
        pipe.delete(PAUSE_INFO_KEY)
        was_paused = pipe.execute()[0]
    if was_paused:
        log.warning("queue resumed by %s", by or "unknown")
    return queue_status()


# --- clear ---


@dataclass
class ClearReport:
    status: str
    removed: int = 0  # RQ jobs taken out of Redis
    canceled: list[str] = field(default_factory=list)  # AIJob ids canceled (waiting and delayed only)

    def as_dict(self) -> dict:
        return {"status": self.status, "removed": self.removed, "canceled": self.canceled}


def _aijob_id(rq_job_id: str) -> uuid.UUID | None:
    # RQ job id == AIJob id for the first delivery, "<id>_<n>" later (jobs.models.AIJob.rq_job_id)
    try:
        return uuid.UUID(rq_job_id.split("_", 1)[0])
    except ValueError:
        return None


def _count_canceled(rows: list[tuple[str, str]]) -> None:
    from monitoring import metrics

    for provider, model in rows:
        metrics.job_finished(provider=provider, model=model, status=JobStatus.CANCELED)


@transaction.atomic
def _cancel_deliveries(rq_job_ids: list[str]) -> list[str]:
    """Cancel the jobs these deliveries carry, each only if still waiting on exactly this delivery."""
    pairs = [(job_id, rq_id) for rq_id in rq_job_ids if (job_id := _aijob_id(rq_id)) is not None]
    if not pairs:
        return []
    now = timezone.now()
    rows = AIJob.objects.raw(
        """
        UPDATE jobs_aijob AS j
           SET status = %s, finished_at = %s, updated_at = %s, next_attempt_at = NULL, rq_job_id = ''
          FROM unnest(%s::uuid[], %s::text[]) AS d(id, rq_job_id)
         WHERE j.id = d.id AND j.rq_job_id = d.rq_job_id AND j.status = ANY(%s)
     RETURNING j.id, j.provider, j.model
        """,
        [
            JobStatus.CANCELED,
            now,
            now,
            [str(job_id) for job_id, _ in pairs],
            [rq_id for _, rq_id in pairs],
            [str(s) for s in WAITING_STATUSES],
        ],
    )
    canceled = [(str(row.id), row.provider, row.model) for row in rows]
    transaction.on_commit(partial(_count_canceled, [(p, m) for _, p, m in canceled]))
    return [job_id for job_id, _, _ in canceled]


def _delete_rq_jobs(conn, rq_job_ids: list[str]) -> None:
    if not rq_job_ids:
        return
    with conn.pipeline() as pipe:
        for rq_job in Job.fetch_many(rq_job_ids, connection=conn):
            if rq_job is not None:
                rq_job.delete(pipeline=pipe, remove_from_queue=False)
        pipe.execute()


def _take_out(conn, key: str, rq_job_ids: list[str], *, kind: str) -> list[str]:
    """Remove the ids from a queue list or a registry; returns those that were still there
    (a worker or the scheduler may have moved the rest meanwhile, and those are not ours to delete)."""
    with conn.pipeline() as pipe:
        for rq_id in rq_job_ids:
            if kind == "list":
                pipe.lrem(key, 1, rq_id)
            else:
                pipe.zrem(key, rq_id)
        results = pipe.execute()
    return [rq_id for rq_id, n in zip(rq_job_ids, results, strict=True) if n]


def _batches(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def queue_clear(*, status: str, on_progress: Callable[[int, int], None] | None = None) -> ClearReport:
    """Empty one status on every queue. waiting/delayed cancel their jobs; failed/completed only drop RQ's records."""
    if status not in CLEARABLE:
        raise InvalidInput(f"status must be one of {', '.join(CLEARABLE)}")
    conn = get_redis()
    report = ClearReport(status=status)
    todo: list[tuple[object, str, list[str]]] = []
    for queue in all_queues():
        if status == "waiting":
            todo.append((queue, queue.key, [str(i) for i in queue.get_job_ids()]))
        elif status == "delayed":
            registry = ScheduledJobRegistry(queue=queue)
            todo.append((queue, registry.key, registry.get_job_ids(cleanup=False)))
        elif status == "failed":
            registry = FailedJobRegistry(queue=queue)
            todo.append((queue, registry.key, registry.get_job_ids(cleanup=False)))
        else:
            registry = FinishedJobRegistry(queue=queue)
            todo.append((queue, registry.key, registry.get_job_ids(cleanup=False)))
    total = sum(len(ids) for _, _, ids in todo)
    done = 0
    for queue, key, ids in todo:
        for batch in _batches(ids, CLEAR_BATCH):
            if status in ("waiting", "delayed"):
                # Postgres first: a delivery that vanishes from Redis between the two steps was
                # taken by a worker, which then finds its job canceled and claims nothing.
                report.canceled.extend(_cancel_deliveries(batch))
            taken = _take_out(conn, key, batch, kind="list" if status == "waiting" else "zset")
            if status == "delayed" and len(taken) < len(batch):
                # the scheduler moved some to the queue meanwhile: take those out of the queue too
                moved = [rq_id for rq_id in batch if rq_id not in set(taken)]
                taken += _take_out(conn, queue.key, moved, kind="list")
            _delete_rq_jobs(conn, taken)
            report.removed += len(taken)
            done += len(batch)
            if on_progress is not None:
                on_progress(done, total)
    if status in ("waiting", "delayed"):
        log.warning(
            "queue clear %s: %d jobs canceled, %d deliveries removed", status, len(report.canceled), report.removed
        )
    return report
