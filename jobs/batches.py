"""Batches: many jobs submitted at once, and canceled at once.

A batch and all its jobs are written in one transaction (one INSERT for the batch, one COPY for up to a thousand
jobs) after every job passed the same validation a single submission does (jobs.submission.job_build); their
first deliveries go to Redis in one pipeline after the commit. A bad job refuses the whole batch, naming its
index, before anything is written.

A batch finishes when its last job reaches a final state: jobs.accounting.batches_settle, called after the
commit of every job end of a batch (pipeline, lease recovery, cancels) and by reconcile, is the one place.
"""

from __future__ import annotations

import hashlib
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
from jobs.submission import idempotent_replay, intake_check, job_build, json_object_checked
from usage.budgets import budget_check
from webhooks.records import webhook_secret_ensure


def batch_submit(
    *,
    owner: AbstractBaseUser,
    jobs: list[dict],
    metadata: dict | None = None,
    idempotency_key: str | None = None,
) -> tuple[Batch, bool]:
    """Create a batch of jobs (each a dict of job_submit's fields) and enqueue them on commit. Returns
    (batch, created); an idempotent replay is not created."""
    intake_check()
    if not jobs:
        raise InvalidInput("jobs must not be empty")
    if len(jobs) > settings.AI_BATCH_MAX_JOBS:
        raise InvalidInput(f"a batch holds at most {settings.AI_BATCH_MAX_JOBS} jobs, not {len(jobs)}")
    metadata = json_object_checked(metadata, what="metadata")
    built: list[AIJob] = []
    for index, fields in enumerate(jobs):
        try:
            built.append(job_build(owner=owner, **fields))
        except InvalidInput as exc:
            raise InvalidInput(f"jobs[{index}]: {exc.message}", details={"index": index}) from None
    fingerprint = hashlib.sha256(
        json.dumps([metadata, [job.request_fingerprint for job in built]], sort_keys=True).encode()
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
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint,
    )
    for job in built:
        job.batch = batch
    try:
        with transaction.atomic():
            if any(job.webhook for job in built):
                webhook_secret_ensure(owner=owner)  # its jobs' events are signed with it
            batch.save(force_insert=True)
            _jobs_insert(built)
            transitions.enqueue_many_on_commit(built, fail_fast=True)
    except IntegrityError:
        if idempotency_key is None:
            raise
        # two requests with one key raced; the other one's batch is committed
        existing = Batch.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
        if existing is None:
            raise
        return idempotent_replay(existing, fingerprint), False
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
