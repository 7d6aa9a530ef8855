"""One firing of a schedule, exactly once: the firing row, the schedule's advance and the job (or the batch, for a
batch template) in one transaction.

The firing key (schedule, scheduled instant) is claimed first with INSERT ... ON CONFLICT DO NOTHING. A second
scheduler process claiming the same key waits on the first one's uncommitted row and, when that commits, inserts
nothing and skips; if the first rolls back, the second fires instead. So however many schedulers run, an instant
makes its job (or batch) once, and a crash before the commit leaves nothing half done: the next tick fires it again.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial

from django.db import connection, transaction

from aipb.exceptions import ServiceError
from jobs.batches import batch_submit
from jobs.models import AIJob, Batch
from jobs.submission import job_submit
from monitoring import metrics
from schedules.cron import next_fire
from schedules.models import FiringOutcome, FiringTrigger, Schedule, ScheduleFiring, TemplateKind

SKIPPED = "skipped"

_META = ScheduleFiring._meta
_CLAIM_COLUMNS = ", ".join(
    _META.get_field(name).column for name in ("schedule", "scheduled_for", "fired_at", "trigger", "error")
)
_CLAIM_SQL = (
    f"INSERT INTO {_META.db_table} ({_CLAIM_COLUMNS}, outcome) VALUES (%s, %s, %s, %s, '', %s) "
    "ON CONFLICT (schedule_id, scheduled_for) DO NOTHING RETURNING id"
)


def _claim(*, schedule: Schedule, scheduled_for: datetime, trigger: str, now: datetime) -> int | None:
    """The new firing's id, or None when that instant is already fired (or being fired, and it then commits)."""
    with connection.cursor() as cursor:
        cursor.execute(_CLAIM_SQL, [schedule.pk, scheduled_for, now, trigger, FiringOutcome.SUBMITTED])
        row = cursor.fetchone()
    return row[0] if row else None


def _job_submit(schedule: Schedule) -> AIJob:
    job, _ = job_submit(
        owner=schedule.owner,
        prompt=schedule.prompt,
        provider=schedule.provider,
        model=schedule.model,
        priority=schedule.priority,
        options=schedule.options,
        max_attempts=schedule.max_attempts,
        webhook=schedule.webhook,
        fallbacks=schedule.fallbacks,
        routing_policy=schedule.routing_policy or None,
    )
    return job


def _batch_submit(schedule: Schedule) -> Batch:
    template = schedule.batch
    batch, _ = batch_submit(
        owner=schedule.owner, jobs=template["jobs"], webhook=template.get("webhook"), metadata=template.get("metadata")
    )
    return batch


def schedule_fire(
    *, schedule: Schedule, scheduled_for: datetime, trigger: str, now: datetime
) -> tuple[str, ScheduleFiring | None]:
    """Fire ``schedule`` for ``scheduled_for``: (outcome, firing), the firing None when skipped.

    A cron firing advances ``next_fire_at`` from ``scheduled_for`` to the first instant after ``now``, on the
    condition that it still is ``scheduled_for`` and the schedule is not paused: however many instants were
    missed while no scheduler ran, they make one job (OPERATIONS_GUIDE.md, "Schedules"). A manual one (run-now)
    leaves ``next_fire_at`` alone. A submission the job rules refuse (intake closed, a provider no longer
    configured) is recorded as a failed firing and the schedule still advances: it is not retried.
    """
    with transaction.atomic():
        firing_id = _claim(schedule=schedule, scheduled_for=scheduled_for, trigger=trigger, now=now)
        if firing_id is None:
            outcome = SKIPPED
        else:
            rows = Schedule.objects.filter(pk=schedule.pk)
            if trigger == FiringTrigger.CRON:
                following = next_fire(schedule.cron, schedule.timezone, after=max(now, scheduled_for))
                advanced = rows.filter(paused=False, next_fire_at=scheduled_for).update(
                    next_fire_at=following, last_fired_at=now
                )
            else:
                advanced = rows.update(last_fired_at=now)
            if not advanced:  # paused, deleted or fired meanwhile: leave no firing row either
                transaction.set_rollback(True)
                outcome = SKIPPED
            else:
                outcome, job_id, batch_id, error = FiringOutcome.SUBMITTED, None, None, ""
                # No savepoint needed: submission refuses before it writes anything, so the transaction stays good.
                try:
                    if schedule.kind == TemplateKind.BATCH:
                        batch_id = _batch_submit(schedule).id
                    else:
                        job_id = _job_submit(schedule).id
                except ServiceError as exc:
                    outcome, error = FiringOutcome.FAILED, exc.message
                ScheduleFiring.objects.filter(pk=firing_id).update(
                    outcome=outcome, job_id=job_id, batch_id=batch_id, error=error
                )
                transaction.on_commit(partial(metrics.schedule_fired, outcome=str(outcome)))
                firing = ScheduleFiring(
                    id=firing_id,
                    schedule=schedule,
                    scheduled_for=scheduled_for,
                    fired_at=now,
                    trigger=trigger,
                    outcome=outcome,
                    job_id=job_id,
                    batch_id=batch_id,
                    error=error,
                )
    if outcome == SKIPPED:
        metrics.schedule_fired(outcome=SKIPPED)
        return SKIPPED, None
    return str(outcome), firing
