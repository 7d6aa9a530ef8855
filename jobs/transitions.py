"""The job state machine: the one module that writes AIJob.status (DESIGN.md §2).

    queued → running → succeeded | retrying | dead;  retrying → queued (a new delivery);
    queued | retrying → canceled;  dead | canceled → queued (retry);  running (lease expired) → retrying | dead

Every change is a conditional UPDATE on the expected old state (and, for a running job, on the attempt that
owns it), so two workers, a retry racing a cancel, a duplicate delivery or a worker finishing after reconcile
took its job back cannot both win. Each function returns whether it won; the caller owns the transaction
(the pipeline, recovery, the operator actions) and records what goes with the change (attempt, usage, dead
letter, metrics). A change that needs a delivery enqueues it on commit.

Also here: the delivery pointer (AIJob.rq_job_id: the AIJob id for the first delivery, "<id>_<n>" later;
only that delivery may claim the job) and the attempt rows that go with a running job's end.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from aipb import prepared
from aipb.redis_client import RedisSkipped, best_effort
from aipb.rows import ModelRows, typed_placeholder
from jobs import fairness, queues
from jobs.errors import Classified, ErrorType
from jobs.models import (
    UNFINISHED_STATUSES,
    WAITING_STATUSES,
    AIJob,
    AttemptOutcome,
    Batch,
    BatchStatus,
    JobAttempt,
    JobStatus,
)
from jobs.providers.base import Usage

log = logging.getLogger(__name__)
_job_rows = ModelRows(AIJob)  # the claim's row, loaded as the ORM would


# --- deliveries ---


def next_delivery(job: AIJob) -> tuple[int, str]:
    number = job.deliveries + 1
    return number, str(job.id) if number == 1 else f"{job.id}_{number}"


def enqueue_on_commit(job: AIJob, *, delay: float = 0.0, fail_fast: bool = False) -> None:
    """Enqueue the job's current delivery once the transaction commits. fail_fast (a web request): skip it
    at once while Redis is down (aipb.redis_client.best_effort) rather than wait out the retries."""
    provider = None if "provider" in job.get_deferred_fields() else job.provider  # None: the worker reads it
    delivery = partial(
        queues.enqueue_delivery,
        job_id=str(job.id),
        rq_job_id=job.rq_job_id,
        priority=job.priority,
        provider=provider,
        delay=delay,
        rate_limit=fairness.rate_limit_for(None if "owner_id" in job.get_deferred_fields() else job.owner_id),
    )
    transaction.on_commit(partial(_enqueue_safely, delivery, job_id=str(job.id), fail_fast=fail_fast))


def _enqueue_safely(delivery: Callable[..., None], *, job_id: str, fail_fast: bool) -> None:
    # The row is committed; if Redis is unreachable now, `reconcile` finds the queued row
    # without an RQ job and enqueues it. The caller's request must not fail for it.
    try:
        if fail_fast:
            best_effort(lambda connection: delivery(connection=connection))
        else:
            delivery()
    except RedisSkipped:
        log.warning("Redis is down: job %s is committed and will be enqueued by reconcile", job_id)
    except Exception:
        log.exception("enqueue of job %s failed; reconcile will re-enqueue it", job_id)


def enqueue_many_on_commit(jobs: list[AIJob], *, fail_fast: bool = False) -> None:
    """Enqueue the jobs' first deliveries once the transaction commits, all in one pipeline (a batch, one owner:
    its deliveries go through the owner's fair-share cap like a single job's)."""
    deliveries = [(str(job.id), job.rq_job_id, job.priority, job.provider) for job in jobs]
    owners = {job.owner_id for job in jobs}
    rate_limit = fairness.rate_limit_for(owners.pop()) if len(owners) == 1 else None
    enqueue = partial(queues.deliveries_enqueue, deliveries, rate_limit=rate_limit)
    transaction.on_commit(partial(_enqueue_many_safely, enqueue, count=len(deliveries), fail_fast=fail_fast))


def _enqueue_many_safely(enqueue: Callable[..., int], *, count: int, fail_fast: bool) -> None:
    try:
        if fail_fast:
            best_effort(lambda connection: enqueue(connection=connection))
        else:
            enqueue()
    except RedisSkipped:
        log.warning("Redis is down: %d jobs are committed and will be enqueued by reconcile", count)
    except Exception:
        log.exception("enqueue of %d jobs failed; reconcile will re-enqueue them", count)


def delete_delivery_on_commit(rq_job_id: str) -> None:
    if rq_job_id:
        transaction.on_commit(partial(_delete_safely, rq_job_id))


def _delete_safely(rq_job_id: str) -> None:
    try:
        queues.delivery_delete(rq_job_id)
    except Exception:
        log.exception("could not remove RQ job %s (it will find nothing to claim)", rq_job_id)


def delivery_replace(job: AIJob, *, delay: float = 0.0) -> bool:
    """A waiting job gets a new delivery (its old one is lost, or got no rate-limit token), attempt budget
    untouched; only if it still waits on the delivery the caller saw."""
    number, new_id = next_delivery(job)
    updated = AIJob.objects.filter(id=job.id, rq_job_id=job.rq_job_id, status__in=WAITING_STATUSES).update(
        rq_job_id=new_id, deliveries=number, updated_at=timezone.now()
    )
    if updated:
        job.rq_job_id, job.deliveries = new_id, number
        enqueue_on_commit(job, delay=delay)
    return bool(updated)


# --- a running job ---


def job_claim(*, job_id: str, rq_job_id: str) -> AIJob | None:
    """queued|retrying → running for this delivery only; a stale or duplicate delivery claims nothing. (The
    pipeline claims through jobs.admission.attempt_claim: this statement, with the owner's limits read in it.)"""
    with prepared.cursor() as cursor:
        cursor.execute(claim_sql(), claim_params(job_id=job_id, rq_job_id=rq_job_id))
        row = cursor.fetchone()
    return None if row is None else claimed_job(row)


@functools.cache
def claim_sql() -> str:
    """The claim: an UPDATE returning the claimed row's columns (``claimed_job`` reads them); its parameters are
    ``claim_params``'. Written once per process."""
    return f"""
        UPDATE jobs_aijob
           SET status = %(running)s, attempts = attempts + 1, started_at = %(now)s, updated_at = %(now)s,
               lease_expires_at = %(lease_until)s, next_attempt_at = NULL
         WHERE id = %(job_id)s AND status IN (%(queued)s, %(retrying)s) AND rq_job_id = %(rq_job_id)s
     RETURNING {_job_rows.columns()}
    """


def claim_params(*, job_id: str, rq_job_id: str) -> dict[str, object]:
    now = timezone.now()
    return {
        "running": JobStatus.RUNNING,
        "now": now,
        "lease_until": now + timedelta(seconds=settings.AI_LEASE_SECONDS),
        "job_id": job_id,
        "queued": JobStatus.QUEUED,
        "retrying": JobStatus.RETRYING,
        "rq_job_id": rq_job_id,
    }


CLAIM_COLUMNS = _job_rows.width  # how many of a claim's columns are the job's


def claimed_job(row: tuple | list) -> AIJob:
    """The job of a row whose first columns are the claim's."""
    return _job_rows.from_row(row[:CLAIM_COLUMNS])


@dataclass(frozen=True)
class AttemptRecord:
    number: int
    started_at: datetime
    finished_at: datetime
    latency_ms: int | None
    usage: Usage | None
    request_id: str | None
    validation_passed: bool | None
    provider: str = ""  # the target that served the attempt (jobs.routing); blank: not known
    model: str = ""


def _finish_running(
    job: AIJob, record: AttemptRecord, *, outcome: str, error: Classified | None, **changes: object
) -> bool:
    """running → a new state and the attempt's row (`outcome`), in one statement, only if attempt `record.number`
    still owns the job (its lease was not taken back); when it does not, neither is written.

    One statement written once per set of changed columns (the ORM's UPDATE, then its INSERT, cost more CPU to
    build than the rest of an attempt's bookkeeping; bench.pipeline --profile)."""
    changes.setdefault("lease_expires_at", None)
    changes["updated_at"] = record.finished_at
    attempt = _attempt_fields(record, outcome=outcome, error=error)
    sql, job_fields, attempt_fields = _finish_sql(tuple(changes), tuple(attempt))
    params = [f.get_db_prep_save(changes[f.name], connection) for f in job_fields]
    params += [job.id, JobStatus.RUNNING, record.number, record.number]
    params += [f.get_db_prep_save(attempt[f.name], connection) for f in attempt_fields]
    with prepared.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount > 0


@functools.cache
def _finish_sql(changed: tuple[str, ...], recorded: tuple[str, ...]) -> tuple[str, tuple, tuple]:
    job_fields = tuple(AIJob._meta.get_field(name) for name in changed)
    attempt_fields = tuple(JobAttempt._meta.get_field(name) for name in recorded)
    number = JobAttempt._meta.get_field("number")
    job_column = JobAttempt._meta.get_field("job").column
    quote = connection.ops.quote_name
    assignments = ", ".join(f"{quote(f.column)} = %s" for f in job_fields)
    columns = ", ".join(quote(f.column) for f in attempt_fields)
    sql = f"""
        WITH moved AS (
            UPDATE {quote(AIJob._meta.db_table)} SET {assignments}
             WHERE id = %s AND status = %s AND attempts = %s
         RETURNING id
        )
        INSERT INTO {quote(JobAttempt._meta.db_table)} ({quote(job_column)}, {quote(number.column)}, {columns})
        SELECT moved.id, {", ".join(typed_placeholder(f, connection) for f in (number, *attempt_fields))}
          FROM moved
    """
    return sql, job_fields, attempt_fields


def _served(record: AttemptRecord) -> dict:
    """The job keeps the target of its latest attempt: the next attempt is routed from it (jobs.routing.chains),
    and a succeeded job shows it as served_by."""
    return {"served_provider": record.provider, "served_model": record.model} if record.provider else {}


def job_succeed(*, job: AIJob, record: AttemptRecord, page: dict) -> bool:
    """running → succeeded, with the attempt's row (succeeded)."""
    return _finish_running(
        job,
        record,
        outcome=AttemptOutcome.SUCCEEDED,
        error=None,
        **_served(record),
        status=JobStatus.SUCCEEDED,
        result=page,
        finished_at=record.finished_at,
        error_type="",
        error_message="",
    )


def job_retry_later(*, job: AIJob, record: AttemptRecord, error: Classified, delay: float) -> bool:
    """running → retrying, with the attempt's row (failed) and the next delivery enqueued after the delay (on
    commit)."""
    number, rq_job_id = next_delivery(job)
    applied = _finish_running(
        job,
        record,
        outcome=AttemptOutcome.FAILED,
        error=error,
        **_served(record),
        status=JobStatus.RETRYING,
        error_type=error.type,
        error_message=error.message,
        next_attempt_at=record.finished_at + timedelta(seconds=delay),
        rq_job_id=rq_job_id,
        deliveries=number,
    )
    if applied:
        job.rq_job_id, job.deliveries = rq_job_id, number
        enqueue_on_commit(job, delay=delay)
    return applied


def job_die(*, job: AIJob, record: AttemptRecord, error: Classified) -> bool:
    """running → dead, with the attempt's row (failed); the caller writes the dead letter in the same
    transaction."""
    return _finish_running(
        job,
        record,
        outcome=AttemptOutcome.FAILED,
        error=error,
        **_served(record),
        status=JobStatus.DEAD,
        error_type=error.type,
        error_message=error.message,
        finished_at=record.finished_at,
    )


def attempt_save(*, job: AIJob, record: AttemptRecord, outcome: str, error: Classified | None) -> bool:
    """The attempt's row, for an attempt that did not end its job (job_succeed, job_retry_later and job_die write
    theirs); returns whether this call created it. An abandoned attempt may already have been recorded by lease
    recovery: the worker that comes back late fills in what recovery could not know."""
    fields = _attempt_fields(record, outcome=outcome, error=error)
    if outcome == AttemptOutcome.ABANDONED:
        # Recovery recorded (and counted) the attempt as abandoned with a TIMEOUT: keep what it said, add what
        # only the worker knows (how long the call took, its tokens, the request id, the validation).
        late = {key: fields[key] for key in _LATE_FIELDS}
        return JobAttempt.objects.update_or_create(
            job=job, number=record.number, defaults=late, create_defaults=fields
        )[1]
    JobAttempt.objects.create(job=job, number=record.number, **fields)
    return True


def _attempt_fields(record: AttemptRecord, *, outcome: str, error: Classified | None) -> dict:
    usage = record.usage or Usage()
    return {
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "outcome": outcome,
        "error_type": error.type if error else "",
        "error_message": error.message if error else "",
        "latency_ms": record.latency_ms,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
        "provider_request_id": (record.request_id or "")[:200],
        "validation_passed": record.validation_passed,
        "provider": record.provider,
        "model": record.model[:200],
    }


_LATE_FIELDS = (
    "finished_at",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "provider_request_id",
    "validation_passed",
    "provider",
    "model",
)


def job_unclaim(*, job: AIJob, delay: float) -> bool:
    """running → back to waiting, the claim's attempt given back: routing found no target it may call (every
    circuit of the job's chain is open), so no attempt ran and none is spent. The job waits in the state the claim
    found it in (queued when no attempt of this budget had run yet, else retrying) for a new delivery."""
    number, rq_job_id = next_delivery(job)
    now = timezone.now()
    previous = JobStatus.QUEUED if job.attempts - 1 == job.budget_base else JobStatus.RETRYING
    updated = AIJob.objects.filter(id=job.id, status=JobStatus.RUNNING, attempts=job.attempts).update(
        status=previous,
        attempts=job.attempts - 1,
        lease_expires_at=None,
        next_attempt_at=now + timedelta(seconds=delay),
        rq_job_id=rq_job_id,
        deliveries=number,
        updated_at=now,
    )
    if updated:
        job.status, job.attempts, job.rq_job_id, job.deliveries = previous, job.attempts - 1, rq_job_id, number
        enqueue_on_commit(job, delay=delay)
    return bool(updated)


# --- lease expiry ---


@dataclass(frozen=True)
class LeaseExpiry:
    job: AIJob
    status: str  # retrying or dead
    error: Classified
    record: AttemptRecord
    attempt_recorded: bool  # False: a worker coming back late had already written the attempt's row


def job_expire_lease(*, job_id: object, now: datetime) -> LeaseExpiry | None:
    """running past its lease → retrying (attempts left) or dead: its worker stopped before finishing.

    Conditional on the attempt that held the lease, so a worker finishing meanwhile, or a second reconcile,
    leaves it alone (None). The abandoned attempt's row is written here; the caller dead-letters a death.
    """
    job = AIJob.objects.filter(id=job_id, status=JobStatus.RUNNING, lease_expires_at__lt=now).first()
    if job is None:
        return None
    error = Classified(
        type=ErrorType.TIMEOUT,
        retryable=True,
        message=f"attempt {job.attempts} abandoned: its worker stopped before finishing (lease expired)",
    )
    record = AttemptRecord(
        number=job.attempts,
        started_at=job.started_at or now,
        finished_at=now,
        latency_ms=None,
        usage=None,
        request_id=None,
        validation_passed=None,
    )
    common = {"error_type": error.type, "error_message": error.message, "lease_expires_at": None, "updated_at": now}
    claimed = AIJob.objects.filter(id=job.id, status=JobStatus.RUNNING, attempts=job.attempts, lease_expires_at__lt=now)
    if job.attempts_left > 0:
        number, rq_job_id = next_delivery(job)
        if not claimed.update(
            status=JobStatus.RETRYING, next_attempt_at=now, rq_job_id=rq_job_id, deliveries=number, **common
        ):
            return None
        job.rq_job_id, job.deliveries = rq_job_id, number
        enqueue_on_commit(job)
        status = JobStatus.RETRYING
    else:
        if not claimed.update(status=JobStatus.DEAD, finished_at=now, **common):
            return None
        status = JobStatus.DEAD
    job.status, job.error_type, job.error_message = status, error.type, error.message
    recorded = attempt_save(job=job, record=record, outcome=AttemptOutcome.ABANDONED, error=error)
    return LeaseExpiry(job=job, status=status, error=error, record=record, attempt_recorded=recorded)


# --- operator transitions ---


def job_cancel_waiting(*, job: AIJob) -> bool:
    """queued|retrying → canceled. Its delivery is removed after commit; if it runs first it claims nothing."""
    now = timezone.now()
    updated = AIJob.objects.filter(id=job.id, status__in=WAITING_STATUSES).update(
        status=JobStatus.CANCELED, finished_at=now, updated_at=now, next_attempt_at=None, rq_job_id=""
    )
    if updated:
        delete_delivery_on_commit(job.rq_job_id)
    return bool(updated)


def jobs_cancel_deliveries(*, rq_job_ids: list[str]) -> list[tuple[str, str, str]]:
    """Cancel the jobs these deliveries carry, each only if still waiting on exactly this delivery.

    One statement for a whole batch (queue clear); returns (job id, provider, model) of each canceled job.
    """
    pairs = [(job_id, rq_id) for rq_id in rq_job_ids if (job_id := _job_id_of(rq_id)) is not None]
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
    return [(str(row.id), row.provider, row.model) for row in rows]


def _job_id_of(rq_job_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(rq_job_id.split("_", 1)[0])
    except ValueError:
        return None


def job_requeue(*, job: AIJob) -> bool:
    """dead|canceled → queued with a fresh budget of max_attempts further attempts, enqueued on commit."""
    number, rq_job_id = next_delivery(job)
    updated = AIJob.objects.filter(
        id=job.id, status__in=(JobStatus.DEAD, JobStatus.CANCELED), deliveries=job.deliveries
    ).update(
        status=JobStatus.QUEUED,
        budget_base=job.attempts,
        finished_at=None,
        next_attempt_at=None,
        error_type="",
        error_message="",
        result=None,
        rq_job_id=rq_job_id,
        deliveries=number,
        updated_at=timezone.now(),
    )
    if updated:
        job.refresh_from_db()
        enqueue_on_commit(job)
    return bool(updated)


# --- batches ---


def batch_jobs_cancel_waiting(*, batch_id: object) -> list[tuple[str, str, str]]:
    """Every queued|retrying job of the batch → canceled, in one statement; running ones go on. Their
    deliveries are removed after commit (one pipeline); one that runs first claims nothing. Returns
    (job id, provider, model) of each canceled job."""
    now = timezone.now()
    rows = list(
        AIJob.objects.raw(
            """
            UPDATE jobs_aijob AS j
               SET status = %s, finished_at = %s, updated_at = %s, next_attempt_at = NULL, rq_job_id = ''
              FROM jobs_aijob AS old
             WHERE j.id = old.id AND j.batch_id = %s AND j.status = ANY(%s)
         RETURNING j.id, j.provider, j.model, old.rq_job_id AS old_rq_job_id
            """,
            [JobStatus.CANCELED, now, now, batch_id, [str(s) for s in WAITING_STATUSES]],
        )
    )
    rq_job_ids = [row.old_rq_job_id for row in rows if row.old_rq_job_id]
    if rq_job_ids:
        transaction.on_commit(partial(_remove_deliveries_safely, rq_job_ids))
    return [(str(row.id), row.provider, row.model) for row in rows]


def _remove_deliveries_safely(rq_job_ids: list[str]) -> None:
    try:
        queues.deliveries_remove(rq_job_ids)
    except Exception:
        log.exception("could not remove %d RQ jobs (they will find nothing to claim)", len(rq_job_ids))


def batch_mark_canceled(*, batch_id: object) -> bool:
    """running → canceled (finished_at comes when its last job ends: batches_finish_if_done)."""
    return bool(Batch.objects.filter(id=batch_id, status=BatchStatus.RUNNING).update(status=BatchStatus.CANCELED))


def batches_finish_if_done(*, batch_ids: list | None = None, created_before: datetime | None = None) -> list[Batch]:
    """Finish each open batch (these, or with None every one created before `created_before`) whose jobs are
    all final: running → completed, a canceled one keeps its status; finished_at set. One conditional UPDATE.

    Race-free when called after the commit that ended a job: each call reads the jobs in a snapshot taken after
    its own commit, so of several jobs ending at once the last to commit sees them all final; the condition on
    finished_at lets only one call finish a batch. A job retried after its batch finished leaves it finished.
    """
    if batch_ids is not None and not batch_ids:
        return []
    where, params = (
        ("b.id = ANY(%s)", [list(batch_ids)]) if batch_ids is not None else ("b.created_at < %s", [created_before])
    )
    now = timezone.now()
    return list(
        Batch.objects.raw(
            f"""
            UPDATE jobs_batch AS b
               SET finished_at = %s, status = CASE WHEN b.status = %s THEN %s ELSE b.status END
             WHERE {where} AND b.finished_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM jobs_aijob AS j WHERE j.batch_id = b.id AND j.status = ANY(%s))
         RETURNING b.*
            """,
            [now, BatchStatus.RUNNING, BatchStatus.COMPLETED, *params, [str(s) for s in UNFINISHED_STATUSES]],
        )
    )
