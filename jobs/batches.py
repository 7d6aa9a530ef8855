"""Batches: many jobs submitted at once, and canceled at once.

A batch and all its jobs are written in one transaction (one INSERT for the batch, one COPY for up to a thousand
jobs) after every job passed the same validation a single submission does (jobs.submission.job_build); their
first deliveries go to Redis in one pipeline after the commit. A bad job refuses the whole batch, naming its
index, before anything is written.

A batch finishes when its last job reaches a final state: jobs.accounting.batches_settle, called after the
commit of every job end of a batch (pipeline, lease recovery, cancels) and by reconcile, is the one place; it
writes the batch's batch.completed event in the transaction of the UPDATE that finishes it.

A batch's webhook: batch.completed is the batch's own; its job events (job.succeeded, job.dead) are copied at
submit onto every job that carries no webhook of its own, so a job's end writes its event as a single job's does
(nothing read from the batch at the job's end). A job with its own webhook keeps it whole.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, models, transaction
from django.utils import timezone
from psycopg.types.json import Jsonb

from aipb.exceptions import Conflict, InvalidInput
from audit.models import AuditAction
from audit.records import Actor, audit_record, reason_checked
from jobs import accounting, batch_selectors, fairness, transitions
from jobs.models import AIJob, Batch, BatchStatus
from jobs.submission import idempotent_replay, intake_check, job_build, json_object_checked, key_race_replay
from usage.budgets import budget_check
from webhooks.records import BATCH_EVENTS, JOB_EVENTS, webhook_secret_ensure, webhook_spec_clean

# What one job of a batch may carry: job_build's fields but its owner and key (the batch has those).
ITEM_FIELDS = frozenset(inspect.signature(job_build).parameters) - {"owner", "idempotency_key"}


def batch_template_clean(
    *, owner: AbstractBaseUser, jobs: list[dict], webhook: dict | None = None, metadata: dict | None = None
) -> tuple[list[AIJob], dict | None, dict]:
    """A batch checked as batch_submit checks it, nothing written: (its jobs built, each carrying the batch's job
    events unless it has a webhook of its own; the batch's webhook; its metadata), or InvalidInput naming the
    field (`webhook...`, `metadata ...`, `jobs[7]: ...`). Also for what submits batches later (schedules), so a
    template is refused when it is saved, by the same rules."""
    if not isinstance(jobs, list) or not jobs:
        raise InvalidInput("jobs must be a non-empty list")
    if len(jobs) > settings.AI_BATCH_MAX_JOBS:
        raise InvalidInput(f"jobs: a batch holds at most {settings.AI_BATCH_MAX_JOBS} jobs, not {len(jobs)}")
    metadata = json_object_checked(metadata, what="metadata")
    webhook = webhook_spec_clean(webhook, events=BATCH_EVENTS)
    inherited = _job_part(webhook)
    built: list[AIJob] = []
    for index, fields in enumerate(jobs):
        try:
            if not isinstance(fields, dict):
                raise InvalidInput("a job must be an object")
            if unknown := sorted(set(fields) - ITEM_FIELDS, key=str):  # the API refuses them first; a template too
                raise InvalidInput(f"unknown fields: {', '.join(map(str, unknown))}")
            if inherited is not None and fields.get("webhook") is None:
                fields = {**fields, "webhook": inherited}
            built.append(job_build(owner=owner, **fields))
        except InvalidInput as exc:
            raise InvalidInput(f"jobs[{index}]: {exc.message}", details={"index": index}) from None
    return built, webhook, metadata


def _job_part(webhook: dict | None) -> dict | None:
    """What a batch's webhook asks of its jobs: its URL with the job events it names (None: it names none)."""
    if not webhook:
        return None
    events = [name for name in webhook["events"] if name in JOB_EVENTS]
    return {"url": webhook["url"], "events": events} if events else None


def batch_submit(
    *,
    owner: AbstractBaseUser,
    jobs: list[dict],
    metadata: dict | None = None,
    webhook: dict | None = None,
    idempotency_key: str | None = None,
) -> tuple[Batch, bool]:
    """Create a batch of jobs (each a dict of job_submit's fields) and enqueue them on commit. Returns
    (batch, created); an idempotent replay is not created.

    ``webhook`` ({"url", "events"} of job.succeeded, job.dead, batch.completed; events omitted: all three):
    batch.completed goes to it once, when the batch finishes (also a canceled one, with status canceled); its job
    events go to it for every job that carries no webhook of its own (a job's own webhook wins, whole)."""
    intake_check()
    built, webhook, metadata = batch_template_clean(owner=owner, jobs=jobs, webhook=webhook, metadata=metadata)
    # the batch's webhook only when given: a batch without one keeps the fingerprint it had before it existed
    fingerprint = hashlib.sha256(
        json.dumps(
            [metadata, [job.request_fingerprint for job in built], *([webhook] if webhook else [])], sort_keys=True
        ).encode()
    ).hexdigest()
    if idempotency_key is not None:
        existing = Batch.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
        if existing is not None:
            return idempotent_replay(existing, fingerprint), False

    fairness.queued_check(owner=owner, adding=len(built))
    budget_check(user_id=owner.pk, stage="submit")  # 429 budget_exceeded, nothing written
    batch = Batch(
        owner=owner,
        total=len(built),
        metadata=metadata,
        webhook=webhook,
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint,
    )
    for job in built:
        job.batch = batch
    try:
        with transaction.atomic():
            if webhook or any(job.webhook for job in built):
                webhook_secret_ensure(owner=owner)  # the batch's and its jobs' events are signed with it
            batch.save(force_insert=True)
            _jobs_insert(built)
            transitions.enqueue_many_on_commit(built, fail_fast=True)
    except IntegrityError:
        replayed = key_race_replay(Batch, owner=owner, idempotency_key=idempotency_key, fingerprint=fingerprint)
        if replayed is None:
            raise
        return replayed, False
    return batch, True


# Every column of AIJob, in order; the JSON ones go through psycopg's Jsonb.
_COLUMNS = tuple(AIJob._meta.concrete_fields)
_JSON_COLUMNS = frozenset(i for i, field in enumerate(_COLUMNS) if isinstance(field, models.JSONField))


def _jobs_insert(jobs: list[AIJob]) -> None:
    """The jobs in one COPY, their rows as the ORM would write them (every field's value on the instance, as
    job_build left it); bulk_create's per-field preparation was a quarter of a batch's CPU (bench.batches).
    created_at (and updated_at) is the batch's instant plus the job's index in microseconds, so the batch's jobs
    list in the order they were given."""
    start = timezone.now()
    for index, job in enumerate(jobs):
        job.created_at = job.updated_at = start + timedelta(microseconds=index)
    quote = connection.ops.quote_name
    sql = f"COPY {quote(AIJob._meta.db_table)} ({', '.join(quote(field.column) for field in _COLUMNS)}) FROM STDIN"
    with connection.cursor() as cursor, cursor.cursor.copy(sql) as copy:
        for job in jobs:
            row = [getattr(job, field.attname) for field in _COLUMNS]
            for i in _JSON_COLUMNS:
                if row[i] is not None:
                    row[i] = Jsonb(row[i])
            copy.write_row(row)


@transaction.atomic
def batch_cancel(
    *, batch_id: object, owner: AbstractBaseUser | None = None, actor: Actor | None = None, reason: str = ""
) -> tuple[Batch, int]:
    """Cancel every job of a running batch that has not started (queued or retrying; running ones finish) and
    mark the batch canceled; it finishes when its last running job ends. Returns (batch, jobs canceled).

    The jobs change before the batch row, the order every job end follows (job, then its batch), so a cancel
    and a worker finishing a job of the batch cannot deadlock."""
    reason = reason_checked(reason)
    batch = batch_selectors.batch_get(user=owner, batch_id=batch_id)  # owner None: an operator, any batch
    if batch.status != BatchStatus.RUNNING:
        raise Conflict(f"batch {batch.id} is {batch.status}; only a running batch can be canceled")
    canceled = transitions.batch_jobs_cancel_waiting(batch_id=batch.id)
    if not transitions.batch_mark_canceled(batch_id=batch.id):
        raise Conflict(f"batch {batch.id} finished meanwhile; nothing was canceled")
    transaction.on_commit(
        partial(accounting.jobs_canceled, [(provider, model) for _, provider, model in canceled], batch_ids=[batch.id])
    )
    if actor is not None and not actor.owns(batch.owner_id):
        audit_record(
            actor=actor,
            action=AuditAction.BATCH_CANCEL,
            target_type="batch",
            target_id=batch.id,
            reason=reason,
            details={"owner": batch.owner.get_username(), "total": batch.total, "canceled": len(canceled)},
        )
    batch.refresh_from_db()
    return batch, len(canceled)
