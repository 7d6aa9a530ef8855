"""Recovery (`manage.py reconcile`): put back what Redis lost and what dead workers dropped, each exactly once.

Postgres is the source of truth; Redis is transport. Two kinds of rows need help:
- waiting (queued/retrying) rows whose delivery will never run (jobs.redis_state.DeliveryView judges that
  from where the delivery is in Redis): they get a new delivery;
- running rows past their lease (the worker died mid-attempt): the attempt is recorded as abandoned, and the
  job retries or dies by the same attempt-budget rule as any failed attempt (jobs.transitions.job_expire_lease).
It also unregisters workers that stopped heart-beating, so a killed worker stops being listed within minutes,
and writes the usage that workers spooled to Redis while Postgres was down (usage.recording).
Every change is a conditional UPDATE, so a second reconcile, or a worker finishing meanwhile, changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.db import transaction
from django.utils import timezone

from aipb.redis_client import get_redis
from dlq.records import dead_letter
from jobs import accounting, fairness, transitions
from jobs.models import WAITING_STATUSES, AIJob, AttemptOutcome, JobStatus
from jobs.redis_state import DeliveryView, workers_forget_gone
from usage.recording import usage_spool_replay
from webhooks.records import webhook_job_ended

log = logging.getLogger(__name__)

RECONCILE_GRACE_SECONDS = 30  # a row this fresh may still be between commit and enqueue
RECONCILE_BATCH = 500
EXPIRED_PER_RUN = 10_000


@dataclass
class ReconcileReport:
    requeued: list[str]  # queued/retrying rows whose RQ delivery Redis lost, or holds where nothing will run it
    recovered: list[str]  # running rows past their lease, put back for another attempt
    dead: list[str]  # running rows past their lease with no attempts left
    dry_run: bool = False

    def as_dict(self) -> dict:
        return {"requeued": self.requeued, "recovered": self.recovered, "dead": self.dead, "dry_run": self.dry_run}


def jobs_reconcile(*, dry_run: bool = False, grace_seconds: float = RECONCILE_GRACE_SECONDS) -> ReconcileReport:
    """Put back what Redis lost and what dead workers dropped, each exactly once (conditional UPDATEs)."""
    now = timezone.now()
    report = ReconcileReport(requeued=[], recovered=[], dead=[], dry_run=dry_run)
    if not dry_run:
        if gone := workers_forget_gone(get_redis()):
            log.warning("unregistered %d workers that stopped heart-beating: %s", len(gone), ", ".join(gone))
        usage_spool_replay()
    waiting = AIJob.objects.filter(
        status__in=WAITING_STATUSES, updated_at__lt=now - timedelta(seconds=grace_seconds)
    ).only("id", "owner_id", "rq_job_id", "deliveries", "priority", "status", "next_attempt_at")
    view = DeliveryView(get_redis(), now=now, grace_seconds=grace_seconds)
    batch: list[AIJob] = []
    for job in waiting.iterator(chunk_size=RECONCILE_BATCH):
        batch.append(job)
        if len(batch) >= RECONCILE_BATCH:
            _requeue_lost(batch, report, now, dry_run, view)
            batch = []
    if batch:
        _requeue_lost(batch, report, now, dry_run, view)
    if not dry_run and (released := fairness.slots_release_lost(get_redis(), view)):
        log.warning("released %d fair-share slots of deliveries that will never end: %s", len(released), released)

    if not dry_run:
        # A batch whose last job ended just before its process died, or was deleted while waiting, finished
        # without anyone settling it: settled here, once (the same conditional UPDATE; logged and counted there).
        accounting.batches_settle(None, created_before=now - timedelta(seconds=grace_seconds))

    expired = AIJob.objects.filter(status=JobStatus.RUNNING, lease_expires_at__lt=now)
    for job in list(expired.only("id", "attempts", "budget_base", "max_attempts")[:EXPIRED_PER_RUN]):
        job_id = job.id
        if dry_run:  # what a real run would do: the same attempt-budget rule as job_expire_lease
            (report.recovered if job.attempts_left > 0 else report.dead).append(str(job_id))
            continue
        status = _recover_expired(job_id, now)
        if status == JobStatus.RETRYING:
            report.recovered.append(str(job_id))
        elif status == JobStatus.DEAD:
            report.dead.append(str(job_id))
    return report


def _requeue_lost(batch: list[AIJob], report: ReconcileReport, now: datetime, dry_run: bool, view) -> None:
    alive = view.alive([job.rq_job_id for job in batch if job.rq_job_id])
    for job in batch:
        if job.rq_job_id in alive:
            continue
        if dry_run:
            report.requeued.append(str(job.id))
            continue
        delay = (job.next_attempt_at - now).total_seconds() if job.next_attempt_at else 0.0
        with transaction.atomic():
            if transitions.delivery_replace(job, delay=max(0.0, delay)):
                report.requeued.append(str(job.id))


@transaction.atomic
def _recover_expired(job_id, now: datetime) -> str | None:
    expiry = transitions.job_expire_lease(job_id=job_id, now=now)
    if expiry is None:
        return None
    job = expiry.job
    entry = None
    if expiry.status == JobStatus.DEAD:
        job.refresh_from_db()
        entry = dead_letter(job=job, classified=expiry.error)
    webhook_job_ended(job=job, status=expiry.status)  # job.dead, in the transaction that recorded the death
    transaction.on_commit(
        partial(
            accounting.attempt_ended,
            provider=job.provider,
            model=job.model,
            record=expiry.record,
            seconds=(now - expiry.record.started_at).total_seconds(),
            outcome=AttemptOutcome.ABANDONED if expiry.attempt_recorded else None,
            error=expiry.error,
            status=expiry.status,
            job_id=job.id,
            delay=0.0 if expiry.status == JobStatus.RETRYING else None,  # put back on the queue at once
            dead_letter_id=entry.id if entry is not None else None,
            batch_id=job.batch_id,
        )
    )
    return expiry.status
