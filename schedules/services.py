"""Writes on schedules: create, delete, pause, resume, run now (the API, the admin and the `schedules` command).

A job template is checked by the rules a submission obeys (jobs.submission.job_build), a batch template by
batch_submit's (jobs.batches.batch_template_clean), the cron expression and time zone by schedules.cron, so a
schedule that is saved can fire. A change to someone else's schedule is written to the audit trail; an owner
acting on their own is not.
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
from jobs.batches import batch_template_clean
from jobs.models import AIJob, Priority
from jobs.submission import job_build
from schedules.cron import next_fire, schedule_checked
from schedules.firing import schedule_fire
from schedules.models import FiringTrigger, Schedule, ScheduleFiring, TemplateKind
from schedules.selectors import schedule_get
from webhooks.records import webhook_secret_ensure

NAME_MAX = 200
# a job template's columns, as job_build checked them (routing_policy apart: unset, it is the default at each firing)
JOB_TEMPLATE_FIELDS = ("prompt", "provider", "model", "priority", "options", "max_attempts", "webhook", "fallbacks")


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
    prompt: str | None = None,
    timezone_name: str = "UTC",
    name: str = "",
    provider: str | None = None,
    model: str | None = None,
    priority: str = Priority.NORMAL,
    options: dict | None = None,
    max_attempts: int | None = None,
    webhook: dict | None = None,
    fallbacks: list[dict] | None = None,
    routing_policy: str | None = None,
    batch: dict | None = None,
    paused: bool = False,
) -> Schedule:
    """A job template (prompt and the other fields of POST /api/ai/jobs) or a batch template (``batch``: the body
    of POST /api/ai/batches, {"jobs": [...], "webhook"?, "metadata"?}), never both; each checked by the cleaners
    its submission uses, so a schedule that is saved can fire."""
    if not isinstance(name, str) or len(name) > NAME_MAX or "\x00" in name:
        raise InvalidInput(f"name must be text of at most {NAME_MAX} characters")
    now = timezone.now()
    cron, zone, first = schedule_checked(cron, timezone_name, now=now)
    if batch is not None:
        if prompt is not None:
            raise InvalidInput("give either prompt (a job template) or batch (a batch template), not both")
        template, jobs = _batch_template(owner=owner, batch=batch)
        webhooks = [template["batch"]["webhook"], *(job.webhook for job in jobs)]
    elif prompt is None:
        raise InvalidInput("prompt (a job template) or batch (a batch template) is required")
    else:
        job = job_build(
            owner=owner,
            prompt=prompt,
            provider=provider,
            model=model,
            priority=priority,
            options=options,
            max_attempts=max_attempts,
            webhook=webhook,
            fallbacks=fallbacks,
            routing_policy=routing_policy,
        )
        template = {
            "kind": TemplateKind.JOB,
            **{name: getattr(job, name) for name in JOB_TEMPLATE_FIELDS},
            # "" fires with AI_ROUTING_POLICY as it is then, as a job submitted without one
            "routing_policy": "" if routing_policy is None else job.routing_policy,
        }
        webhooks = [job.webhook]
    # the owner's row locked: two creations at once cannot both pass the limit
    get_user_model().objects.select_for_update().filter(pk=owner.pk).first()
    if Schedule.objects.filter(owner=owner).count() >= settings.AI_SCHEDULES_PER_USER_MAX:
        raise Conflict(
            f"you have {settings.AI_SCHEDULES_PER_USER_MAX} schedules, the most allowed "
            "(AI_SCHEDULES_PER_USER_MAX); delete one first"
        )
    if any(webhooks):
        webhook_secret_ensure(owner=owner)  # as a submission with a webhook does: its firings' events are signed
    return Schedule.objects.create(
        owner=owner,
        name=name,
        cron=cron,
        timezone=zone,
        paused=paused,
        next_fire_at=None if paused else first,
        **template,
    )


def _batch_template(*, owner: AbstractBaseUser, batch: object) -> tuple[dict, list[AIJob]]:
    """The schedule's columns for a batch template ({"jobs", "webhook", "metadata"} as batch_submit will take it at
    each firing) and its jobs as batch_submit would build them, or InvalidInput naming the field under ``batch``."""
    if not isinstance(batch, dict):
        raise InvalidInput("batch must be an object with jobs (and webhook, metadata)")
    if unknown := sorted(set(batch) - {"jobs", "webhook", "metadata"}, key=str):
        raise InvalidInput(f"batch has unknown fields: {', '.join(map(str, unknown))}")
    try:
        jobs, webhook, metadata = batch_template_clean(
            owner=owner, jobs=batch.get("jobs"), webhook=batch.get("webhook"), metadata=batch.get("metadata")
        )
    except InvalidInput as exc:
        raise InvalidInput(f"batch.{exc.message}", details=exc.details) from None
    template = {"jobs": batch["jobs"], "webhook": webhook, "metadata": metadata}
    return {"kind": TemplateKind.BATCH, "batch": template}, jobs


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
