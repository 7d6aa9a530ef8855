"""Writes on schedules: create, delete, pause, resume, run now (the API, the admin and the `schedules` command).

The job template is checked by the rules a submission obeys (jobs.submission.job_fields_clean), the cron
expression and time zone by schedules.cron, so a schedule that is saved can fire. A change to someone else's
schedule is written to the audit trail; an owner acting on their own is not.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from aipb.exceptions import Conflict, InvalidInput
from audit.models import AuditAction
from audit.records import Actor, audit_record, reason_checked
from jobs.models import Priority
from jobs.submission import job_fields_clean
from schedules.cron import next_fire, schedule_checked
from schedules.firing import schedule_fire
from schedules.models import FiringTrigger, Schedule, ScheduleFiring
from schedules.selectors import schedule_get

NAME_MAX = 200


def _audit(schedule: Schedule, *, actor: Actor | None, action: str, reason: str) -> None:
    if actor is None or actor.owns(schedule.owner_id):
        return
    details = {
        "owner": schedule.owner.get_username(),
        "name": schedule.name,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "paused": schedule.paused,
    }
    audit_record(
        actor=actor, action=action, target_type="schedule", target_id=schedule.id, reason=reason, details=details
    )


@transaction.atomic
def schedule_create(
    *,
    owner: AbstractBaseUser,
    cron: str,
    prompt: str,
    timezone_name: str = "UTC",
    name: str = "",
    provider: str | None = None,
    model: str | None = None,
    priority: str = Priority.NORMAL,
    options: dict | None = None,
    max_attempts: int | None = None,
    paused: bool = False,
) -> Schedule:
    if not isinstance(name, str) or len(name) > NAME_MAX or "\x00" in name:
        raise InvalidInput(f"name must be text of at most {NAME_MAX} characters")
    now = timezone.now()
    cron, zone, first = schedule_checked(cron, timezone_name, now=now)
    fields = job_fields_clean(
        prompt=prompt, provider=provider, model=model, priority=priority, options=options, max_attempts=max_attempts
    )
    # the owner's row locked: two creations at once cannot both pass the limit
    get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
    if Schedule.objects.filter(owner=owner).count() >= settings.AI_SCHEDULES_PER_USER_MAX:
        raise Conflict(
            f"you have {settings.AI_SCHEDULES_PER_USER_MAX} schedules, the most allowed "
            "(AI_SCHEDULES_PER_USER_MAX); delete one first"
        )
    return Schedule.objects.create(
        owner=owner,
        name=name,
        cron=cron,
        timezone=zone,
        paused=paused,
        next_fire_at=None if paused else first,
        **fields,
    )


@transaction.atomic
def schedule_delete(
    *, schedule_id: object, owner: AbstractBaseUser | None = None, actor: Actor | None = None, reason: str = ""
) -> None:
    """``owner`` given: only that owner's schedule (another's is a 404). Its firing records go with it."""
    reason = reason_checked(reason)
    schedule = schedule_get(user=owner, schedule_id=schedule_id)
    Schedule.objects.filter(pk=schedule.pk).delete()
    _audit(schedule, actor=actor, action=AuditAction.SCHEDULE_DELETE, reason=reason)


@transaction.atomic
def schedule_pause(
    *, schedule_id: object, owner: AbstractBaseUser | None = None, actor: Actor | None = None, reason: str = ""
) -> Schedule:
    """Stop firing until resumed. Pausing a paused schedule changes nothing and records nothing."""
    reason = reason_checked(reason)
    schedule = schedule_get(user=owner, schedule_id=schedule_id)
    if Schedule.objects.filter(pk=schedule.pk, paused=False).update(
        paused=True, next_fire_at=None, updated_at=timezone.now()
    ):
        _audit(schedule, actor=actor, action=AuditAction.SCHEDULE_PAUSE, reason=reason)
    schedule.refresh_from_db()
    return schedule


@transaction.atomic
def schedule_resume(
    *, schedule_id: object, owner: AbstractBaseUser | None = None, actor: Actor | None = None, reason: str = ""
) -> Schedule:
    """Fire again from the first instant after now: what fell due while paused is not made up."""
    reason = reason_checked(reason)
    schedule = schedule_get(user=owner, schedule_id=schedule_id)
    now = timezone.now()
    following = next_fire(schedule.cron, schedule.timezone, after=now)
    if Schedule.objects.filter(pk=schedule.pk, paused=True).update(
        paused=False, next_fire_at=following, updated_at=now
    ):
        _audit(schedule, actor=actor, action=AuditAction.SCHEDULE_RESUME, reason=reason)
    schedule.refresh_from_db()
    return schedule


@transaction.atomic  # the firing's own transaction is then a savepoint: the audit entry commits with it
def schedule_run_now(
    *, schedule_id: object, owner: AbstractBaseUser | None = None, actor: Actor | None = None, reason: str = ""
) -> ScheduleFiring:
    """Submit the schedule's job now, paused or not; the cron firings go on as before."""
    reason = reason_checked(reason)
    schedule = schedule_get(user=owner, schedule_id=schedule_id)
    now = timezone.now()
    outcome, firing = schedule_fire(schedule=schedule, scheduled_for=now, trigger=FiringTrigger.MANUAL, now=now)
    if firing is None:  # deleted meanwhile, or a run-now at the very same microsecond
        raise Conflict(f"schedule {schedule.id} was not fired: it was deleted or fired at this instant already")
    _audit(schedule, actor=actor, action=AuditAction.SCHEDULE_RUN_NOW, reason=reason)
    return firing
