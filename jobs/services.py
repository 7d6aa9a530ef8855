"""Writes for jobs. Every state change is a conditional UPDATE on the expected old state,
so two workers, a retry racing a cancel, or a duplicate delivery cannot both win."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from aipb.exceptions import Conflict, InvalidInput, NotFound
from jobs import catalogue, queues
from jobs.errors import Classified
from jobs.models import AIJob, AttemptOutcome, JobAttempt, JobStatus, Priority
from jobs.providers.base import Usage

log = logging.getLogger(__name__)

MAX_OPTIONS_DEPTH = 5


def _fingerprint(**fields: object) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _depth(value: object, level: int = 0) -> int:
    if level > MAX_OPTIONS_DEPTH:
        return level  # deep enough to refuse; don't recurse down 900 levels of hostile JSON
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def _unstorable(value: object) -> str | None:
    """What PostgreSQL's jsonb cannot hold (a 500 at INSERT time otherwise); called on bounded depth."""
    if isinstance(value, str):
        if "\x00" in value:
            return "must not contain NUL characters"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "must be valid Unicode text (no lone surrogates)"
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "numbers must be finite"
    if isinstance(value, dict):
        return next(filter(None, (_unstorable(v) for item in value.items() for v in item)), None)
    if isinstance(value, list):
        return next(filter(None, map(_unstorable, value)), None)
    return None


def _clean_options(options: dict | None, provider: str) -> dict:
    options = dict(options or {})
    if _depth(options) > MAX_OPTIONS_DEPTH:  # first: the checks below recurse
        raise InvalidInput(f"options may nest at most {MAX_OPTIONS_DEPTH} levels deep")
    if len(json.dumps(options)) > settings.AI_MAX_OPTIONS_BYTES:
        raise InvalidInput(f"options must be at most {settings.AI_MAX_OPTIONS_BYTES} bytes of JSON")
    problem = _unstorable(options)
    if problem:
        raise InvalidInput(f"options {problem}")
    if "simulate" in options:
        if provider != "simulated":
            raise InvalidInput("options.simulate is only accepted with provider 'simulated'")
        from jobs.providers.simulated import validate_simulate_options

        try:
            options["simulate"] = validate_simulate_options(options["simulate"])
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    return options


def _enqueue_on_commit(job: AIJob, *, delay: float = 0.0) -> None:
    provider = None if "provider" in job.get_deferred_fields() else job.provider  # None: the worker reads it
    transaction.on_commit(
        partial(
            _enqueue_safely,
            job_id=str(job.id),
            rq_job_id=job.rq_job_id,
            priority=job.priority,
            provider=provider,
            delay=delay,
        )
    )


def _enqueue_safely(*, job_id: str, rq_job_id: str, priority: str, provider: str | None, delay: float) -> None:
    # The row is committed; if Redis is unreachable now, `reconcile` finds the queued row
    # without an RQ job and enqueues it. The caller's request must not fail for it.
    try:
        queues.enqueue_delivery(job_id=job_id, rq_job_id=rq_job_id, priority=priority, provider=provider, delay=delay)
    except Exception:
        log.exception("enqueue of job %s failed; reconcile will re-enqueue it", job_id)


def _next_delivery(job: AIJob) -> tuple[int, str]:
    number = job.deliveries + 1
    return number, str(job.id) if number == 1 else f"{job.id}_{number}"


@transaction.atomic
def job_submit(
    *,
    owner: AbstractBaseUser,
    prompt: str,
    provider: str | None = None,
    model: str | None = None,
    priority: str = Priority.NORMAL,
    options: dict | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
) -> tuple[AIJob, bool]:
    """Create a job and enqueue it on commit. Returns (job, created); an idempotent replay is not created."""
    provider = provider or catalogue.default_provider()
    try:
        model = model or catalogue.default_model(provider)
        catalogue.lookup(provider, model)
    except (catalogue.CatalogueError, KeyError) as exc:
        raise InvalidInput(str(exc).strip("'")) from None
    if not catalogue.provider_configured(provider):
        raise InvalidInput(f"provider '{provider}' is not configured on this server")
    if not prompt or not prompt.strip():
        raise InvalidInput("prompt must not be empty")
    if problem := _unstorable(prompt):  # NUL, lone surrogates
        raise InvalidInput(f"prompt {problem}")
    if len(prompt) > settings.AI_MAX_PROMPT_CHARS:
        raise InvalidInput(f"prompt must be at most {settings.AI_MAX_PROMPT_CHARS} characters")
    if priority not in Priority.values:
        raise InvalidInput(f"priority must be one of {', '.join(Priority.values)}")
    max_attempts = settings.AI_MAX_ATTEMPTS if max_attempts is None else max_attempts
    if not 1 <= max_attempts <= 10:
        raise InvalidInput("max_attempts must be from 1 to 10")
    options = _clean_options(options, provider)

    fingerprint = _fingerprint(
        prompt=prompt, provider=provider, model=model, priority=priority, options=options, max_attempts=max_attempts
    )
    if idempotency_key is not None:
        existing = AIJob.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
        if existing is not None:
            return _idempotent_replay(existing, fingerprint), False

    job = AIJob(
        owner=owner,
        provider=provider,
        model=model,
        prompt=prompt,
        options=options,
        priority=priority,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint,
    )
    job.deliveries, job.rq_job_id = _next_delivery(job)
    if idempotency_key is None:
        job.save(force_insert=True)  # nothing can collide: no savepoint round trips
        _enqueue_on_commit(job)
        return job, True
    try:
        with transaction.atomic():
            job.save(force_insert=True)
    except IntegrityError:
        # two requests with one key raced; the other one's row is committed or about to be
        existing = AIJob.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
        if existing is None:
            raise
        return _idempotent_replay(existing, fingerprint), False
    _enqueue_on_commit(job)
    return job, True


def _idempotent_replay(existing: AIJob, fingerprint: str) -> AIJob:
    if existing.request_fingerprint != fingerprint:
        raise Conflict("this Idempotency-Key was already used with a different request body")
    return existing


# --- the attempt lifecycle (called by jobs.pipeline) ---


def job_claim(*, job_id: str, rq_job_id: str) -> AIJob | None:
    """queued|retrying → running for this delivery only; a stale or duplicate delivery claims nothing."""
    now = timezone.now()
    rows = list(
        AIJob.objects.raw(
            """
            UPDATE jobs_aijob
               SET status = %s, attempts = attempts + 1, started_at = %s, updated_at = %s,
                   lease_expires_at = %s, next_attempt_at = NULL
             WHERE id = %s AND status IN (%s, %s) AND rq_job_id = %s
         RETURNING *
            """,
            [
                JobStatus.RUNNING,
                now,
                now,
                now + timedelta(seconds=settings.AI_LEASE_SECONDS),
                job_id,
                JobStatus.QUEUED,
                JobStatus.RETRYING,
                rq_job_id,
            ],
        )
    )
    return rows[0] if rows else None


def job_reschedule_delivery(*, job: AIJob, rq_job_id: str, delay: float) -> bool:
    """Hand a delivery that got no rate-limit token back to the queue, attempt budget untouched."""
    with transaction.atomic():
        number, new_id = _next_delivery(job)
        updated = AIJob.objects.filter(
            id=job.id, rq_job_id=rq_job_id, status__in=(JobStatus.QUEUED, JobStatus.RETRYING)
        ).update(rq_job_id=new_id, deliveries=number, updated_at=timezone.now())
        if updated:
            job.rq_job_id, job.deliveries = new_id, number
            _enqueue_on_commit(job, delay=delay)
    return bool(updated)


@dataclass(frozen=True)
class AttemptRecord:
    number: int
    started_at: datetime
    finished_at: datetime
    latency_ms: int
    usage: Usage | None
    request_id: str | None
    validation_passed: bool | None


def _save_attempt(job: AIJob, record: AttemptRecord, outcome: str, error: Classified | None) -> None:
    usage = record.usage or Usage()
    fields = {
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
    }
    if outcome == AttemptOutcome.ABANDONED:
        # reconcile may already have recorded this attempt as abandoned: fill in what it did not know
        JobAttempt.objects.update_or_create(job=job, number=record.number, defaults=fields)
    else:
        JobAttempt.objects.create(job=job, number=record.number, **fields)


def _record_usage(job: AIJob, record: AttemptRecord):
    if record.usage is None:
        return None
    from usage.services import usage_record

    return usage_record(job=job, attempt=record.number, usage=record.usage, at=record.finished_at)


def _finish_running(job: AIJob, record: AttemptRecord, **changes: object) -> bool:
    """running → a new state, only if this attempt still owns the job (its lease was not taken back)."""
    changes.setdefault("lease_expires_at", None)
    changes["updated_at"] = record.finished_at
    return bool(AIJob.objects.filter(id=job.id, status=JobStatus.RUNNING, attempts=record.number).update(**changes))


@dataclass(frozen=True)
class AttemptResult:
    applied: bool  # False: the job was taken back by reconcile meanwhile; this attempt was abandoned
    status: str
    cost: object = None
    dead_letter_id: int | None = None


@transaction.atomic
def attempt_succeeded(*, job: AIJob, record: AttemptRecord, page: dict) -> AttemptResult:
    applied = _finish_running(
        job,
        record,
        status=JobStatus.SUCCEEDED,
        result=page,
        finished_at=record.finished_at,
        error_type="",
        error_message="",
    )
    _save_attempt(job, record, AttemptOutcome.SUCCEEDED if applied else AttemptOutcome.ABANDONED, None)
    row = _record_usage(job, record)
    return AttemptResult(applied, JobStatus.SUCCEEDED, cost=row.cost if row else None)


@transaction.atomic
def attempt_failed(*, job: AIJob, record: AttemptRecord, error: Classified, retry_delay: float | None) -> AttemptResult:
    """retry_delay None: the job dies (dead letter in this transaction); else it is retried after the delay."""
    if retry_delay is not None:
        number, rq_job_id = _next_delivery(job)
        applied = _finish_running(
            job,
            record,
            status=JobStatus.RETRYING,
            error_type=error.type,
            error_message=error.message,
            next_attempt_at=record.finished_at + timedelta(seconds=retry_delay),
            rq_job_id=rq_job_id,
            deliveries=number,
        )
        status = JobStatus.RETRYING
    else:
        applied = _finish_running(
            job,
            record,
            status=JobStatus.DEAD,
            error_type=error.type,
            error_message=error.message,
            finished_at=record.finished_at,
        )
        status = JobStatus.DEAD
    _save_attempt(job, record, AttemptOutcome.FAILED if applied else AttemptOutcome.ABANDONED, error)
    row = _record_usage(job, record)
    dead_letter_id = None
    if applied and retry_delay is not None:
        job.rq_job_id, job.deliveries = rq_job_id, number
        _enqueue_on_commit(job, delay=retry_delay)
    elif applied:
        from dlq.services import dead_letter

        job.refresh_from_db()
        dead_letter_id = dead_letter(job=job, classified=error).id
    return AttemptResult(applied, status, cost=row.cost if row else None, dead_letter_id=dead_letter_id)


# --- operator actions ---


def _get(job_id: object, *, owner: AbstractBaseUser | None = None) -> AIJob:
    qs = AIJob.objects.all()
    if owner is not None:
        qs = qs.filter(owner=owner)
    try:
        return qs.get(id=job_id)
    except (AIJob.DoesNotExist, ValueError, TypeError):
        raise NotFound(f"job {job_id} not found") from None
    except Exception as exc:  # malformed UUID from a command line
        if exc.__class__.__name__ == "ValidationError":
            raise NotFound(f"job {job_id} not found") from None
        raise


@transaction.atomic
def job_cancel(*, job_id: object, owner: AbstractBaseUser | None = None) -> AIJob:
    """queued|retrying → canceled. The RQ job is removed after commit; if it runs first it finds nothing to claim."""
    job = _get(job_id, owner=owner)
    now = timezone.now()
    updated = AIJob.objects.filter(id=job.id, status__in=(JobStatus.QUEUED, JobStatus.RETRYING)).update(
        status=JobStatus.CANCELED, finished_at=now, updated_at=now, next_attempt_at=None, rq_job_id=""
    )
    if not updated:
        job.refresh_from_db()
        raise Conflict(f"job {job.id} is {job.status}; only queued or retrying jobs can be canceled")
    transaction.on_commit(partial(_drop_rq_job, job.rq_job_id))
    transaction.on_commit(partial(_count_final, job.provider, job.model, JobStatus.CANCELED))
    job.refresh_from_db()
    return job


def _count_final(provider: str, model: str, status: str) -> None:
    from monitoring import metrics

    metrics.job_finished(provider=provider, model=model, status=status)


def _drop_rq_job(rq_job_id: str) -> None:
    if not rq_job_id:
        return
    try:
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        from aipb.redis_client import get_redis

        try:
            Job.fetch(rq_job_id, connection=get_redis()).delete()
        except NoSuchJobError:
            pass
    except Exception:
        log.exception("could not remove RQ job %s (it will find nothing to claim)", rq_job_id)


@transaction.atomic
def job_retry(*, job_id: object, owner: AbstractBaseUser | None = None) -> AIJob:
    """dead|canceled → queued with a fresh budget of max_attempts further attempts."""
    job = _get(job_id, owner=owner)
    number, rq_job_id = _next_delivery(job)
    now = timezone.now()
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
        updated_at=now,
    )
    if not updated:
        job.refresh_from_db()
        raise Conflict(f"job {job.id} is {job.status}; only dead or canceled jobs can be retried")
    from dlq.services import dlq_mark_retried_for_job

    dlq_mark_retried_for_job(job_id=job.id, at=now)
    job.refresh_from_db()
    _enqueue_on_commit(job)
    return job


@transaction.atomic
def job_delete(*, job_id: object, owner: AbstractBaseUser | None = None) -> None:
    job = _get(job_id, owner=owner)
    deleted, _ = AIJob.objects.filter(id=job.id).exclude(status=JobStatus.RUNNING).delete()
    if not deleted:
        raise Conflict(f"job {job.id} is running; cancel is not possible and delete must wait until it finishes")
    transaction.on_commit(partial(_drop_rq_job, job.rq_job_id))


# --- recovery ---

RECONCILE_GRACE_SECONDS = 30  # a row this fresh may still be between commit and enqueue
RECONCILE_BATCH = 500


@dataclass
class ReconcileReport:
    requeued: list[str]  # queued/retrying rows whose RQ delivery Redis lost, or holds where nothing will run it
    recovered: list[str]  # running rows past their lease, put back for another attempt
    dead: list[str]  # running rows past their lease with no attempts left
    dry_run: bool = False

    def as_dict(self) -> dict:
        return {"requeued": self.requeued, "recovered": self.recovered, "dead": self.dead, "dry_run": self.dry_run}


# A started delivery whose worker stopped heart-beating this long ago is dead (RQ beats at least every
# job_monitoring_interval, 30 s by default; RQ's own cleanup only runs in a worker's maintenance, every 10 min).
RECONCILE_STALE_HEARTBEAT_SECONDS = 180


class _RedisView:
    """Which RQ deliveries will still run, judged from where they are in Redis, not just their status.

    A status alone can lie after a crash: a worker SIGKILLed right after BLPOP leaves a job "queued" in no
    queue (nothing will ever pop it); a scheduled delivery waits forever when the worker holding RQ's
    scheduler lock died (a new scheduler takes the lock over only in a worker's maintenance); a "started"
    one whose worker died stays started until RQ's own cleanup, also in that maintenance. Calling such a
    delivery lost is safe: the job gets a new delivery id, and the old one, should it run after all,
    claims nothing. Each queue's list is read once per reconcile run (as many ids as jobs wait, like
    the database query that found them).
    """

    # A worker's BLPOP takes a delivery off its list a moment before the worker registers it as started:
    # a "queued" delivery found in neither place is looked at once more this much later before it counts
    # as lost (found by the load test, where reconcile runs over a long backlog while workers pop it).
    RECHECK_SECONDS = 1.0

    def __init__(self, *, now: datetime, grace_seconds: float) -> None:
        from aipb.redis_client import get_redis

        self.conn = get_redis()
        self.now = now.timestamp()
        self.grace = grace_seconds
        self._listed: dict[str, set[str]] = {}  # queue name: ids in its list, read once per run

    @staticmethod
    def _text(value) -> str:
        return value.decode() if isinstance(value, bytes) else value

    def _in_list(self, origin: str) -> set[str]:
        if origin not in self._listed:
            from rq.queue import Queue

            key, ids, start, step = Queue.redis_queue_namespace_prefix + origin, set(), 0, 10_000
            while True:
                chunk = self.conn.lrange(key, start, start + step - 1)
                ids.update(self._text(item) for item in chunk)
                if len(chunk) < step:
                    break
                start += step
            self._listed[origin] = ids
        return self._listed[origin]

    def _started(self, origin: str) -> set[str]:
        from rq.registry import StartedJobRegistry

        members = self.conn.zrange(StartedJobRegistry.key_template.format(origin), 0, -1)
        return {self._text(member).split(":", 1)[0] for member in members}  # "<job id>:<execution id>"

    def alive(self, rq_job_ids: list[str]) -> set[str]:
        found, suspects = self._judge(rq_job_ids, recheck=False)
        if suspects:
            time.sleep(self.RECHECK_SECONDS)
            found |= self._judge(suspects, recheck=True)[0]
        return found

    def _judge(self, rq_job_ids: list[str], *, recheck: bool) -> tuple[set[str], list[str]]:
        from rq.job import Job
        from rq.job import JobStatus as RQStatus
        from rq.queue import Queue
        from rq.registry import ScheduledJobRegistry

        found, scheduled, suspects = set(), [], []
        started: dict[str, set[str]] = {}
        for rq_job in Job.fetch_many(rq_job_ids, connection=self.conn):
            status = rq_job.get_status(refresh=False) if rq_job is not None else None
            if status == RQStatus.QUEUED:
                origin = rq_job.origin
                if origin not in started:
                    started[origin] = self._started(origin)
                listed = (
                    self.conn.lpos(Queue.redis_queue_namespace_prefix + origin, rq_job.id) is not None
                    if recheck
                    else rq_job.id in self._in_list(origin)
                )
                if listed or rq_job.id in started[origin]:
                    found.add(rq_job.id)
                else:
                    suspects.append(rq_job.id)
            elif status == RQStatus.SCHEDULED:
                scheduled.append(rq_job)
            elif status == RQStatus.STARTED:
                beat = rq_job.last_heartbeat or rq_job.started_at
                if beat is None or beat.timestamp() > self.now - RECONCILE_STALE_HEARTBEAT_SECONDS:
                    found.add(rq_job.id)
            elif status == RQStatus.DEFERRED:
                found.add(rq_job.id)
        if scheduled:
            pipe = self.conn.pipeline(transaction=False)
            for rq_job in scheduled:
                pipe.zscore(ScheduledJobRegistry.key_template.format(rq_job.origin), rq_job.id)
            for rq_job, run_at in zip(scheduled, pipe.execute(), strict=True):
                if run_at is not None and float(run_at) > self.now - self.grace:  # not overdue: a scheduler moves it
                    found.add(rq_job.id)
        return found, suspects


def jobs_reconcile(*, dry_run: bool = False, grace_seconds: float = RECONCILE_GRACE_SECONDS) -> ReconcileReport:
    """Put back what Redis lost and what dead workers dropped, each exactly once (conditional UPDATEs)."""
    now = timezone.now()
    report = ReconcileReport(requeued=[], recovered=[], dead=[], dry_run=dry_run)
    waiting = AIJob.objects.filter(
        status__in=(JobStatus.QUEUED, JobStatus.RETRYING), updated_at__lt=now - timedelta(seconds=grace_seconds)
    ).only("id", "rq_job_id", "deliveries", "priority", "status", "next_attempt_at")
    redis_view = _RedisView(now=now, grace_seconds=grace_seconds)
    batch: list[AIJob] = []
    for job in waiting.iterator(chunk_size=RECONCILE_BATCH):
        batch.append(job)
        if len(batch) >= RECONCILE_BATCH:
            _requeue_lost(batch, report, now, dry_run, redis_view)
            batch = []
    if batch:
        _requeue_lost(batch, report, now, dry_run, redis_view)

    expired = AIJob.objects.filter(status=JobStatus.RUNNING, lease_expires_at__lt=now).values_list("id", flat=True)
    for job_id in list(expired[:10_000]):
        outcome = "dry" if dry_run else _recover_expired(job_id, now)
        if outcome in ("recovered", "dry"):
            report.recovered.append(str(job_id))
        elif outcome == "dead":
            report.dead.append(str(job_id))
    return report


def _requeue_lost(
    batch: list[AIJob], report: ReconcileReport, now: datetime, dry_run: bool, redis_view: _RedisView
) -> None:
    alive = redis_view.alive([job.rq_job_id for job in batch if job.rq_job_id])
    for job in batch:
        if job.rq_job_id in alive:
            continue
        if dry_run:
            report.requeued.append(str(job.id))
            continue
        with transaction.atomic():
            number, rq_job_id = _next_delivery(job)
            updated = AIJob.objects.filter(id=job.id, status=job.status, rq_job_id=job.rq_job_id).update(
                rq_job_id=rq_job_id, deliveries=number, updated_at=now
            )
            if updated:
                job.rq_job_id, job.deliveries = rq_job_id, number
                delay = (job.next_attempt_at - now).total_seconds() if job.next_attempt_at else 0.0
                _enqueue_on_commit(job, delay=max(0.0, delay))
                report.requeued.append(str(job.id))


@transaction.atomic
def _recover_expired(job_id, now: datetime) -> str:
    from jobs.errors import Classified, ErrorType

    job = (
        AIJob.objects.select_for_update().filter(id=job_id, status=JobStatus.RUNNING, lease_expires_at__lt=now).first()
    )
    if job is None:
        return "gone"
    error = Classified(
        type=ErrorType.TIMEOUT,
        retryable=True,
        message=f"attempt {job.attempts} abandoned: its worker stopped before finishing (lease expired)",
    )
    JobAttempt.objects.get_or_create(
        job=job,
        number=job.attempts,
        defaults={
            "started_at": job.started_at or now,
            "finished_at": now,
            "outcome": AttemptOutcome.ABANDONED,
            "error_type": error.type,
            "error_message": error.message,
        },
    )
    used = job.attempts - job.budget_base
    if used < job.max_attempts:
        number, rq_job_id = _next_delivery(job)
        AIJob.objects.filter(id=job.id).update(
            status=JobStatus.RETRYING,
            error_type=error.type,
            error_message=error.message,
            lease_expires_at=None,
            next_attempt_at=now,
            rq_job_id=rq_job_id,
            deliveries=number,
            updated_at=now,
        )
        job.rq_job_id, job.deliveries = rq_job_id, number
        _enqueue_on_commit(job)
        return "recovered"
    AIJob.objects.filter(id=job.id).update(
        status=JobStatus.DEAD,
        error_type=error.type,
        error_message=error.message,
        lease_expires_at=None,
        finished_at=now,
        updated_at=now,
    )
    from dlq.services import dead_letter

    job.refresh_from_db()
    dead_letter(job=job, classified=error)
    transaction.on_commit(partial(_count_final, job.provider, job.model, JobStatus.DEAD))
    return "dead"


# --- bulk operator actions ---

BULK_RETRY_STATUSES = (JobStatus.DEAD, JobStatus.CANCELED)


@dataclass
class BulkRetryReport:
    matched: int  # jobs the filter selected
    retried: list[str]  # put back on the queue
    conflicted: list[str]  # changed state meanwhile (retried by someone else, deleted); left alone
    dry_run: bool = False

    def as_dict(self) -> dict:
        return {
            "matched": self.matched,
            "retried": self.retried,
            "conflicted": self.conflicted,
            "dry_run": self.dry_run,
        }


def jobs_retry_bulk(
    *,
    status: str = JobStatus.DEAD,
    error_type: str | None = None,
    since: datetime | None = None,
    dry_run: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> BulkRetryReport:
    """Retry every job in `status` (dead or canceled), optionally of one error type and finished since a time.

    Each job goes through job_retry in its own transaction (a fresh attempt budget, its dead letters
    resolved, enqueued on commit), so a job that changed meanwhile is counted as a conflict, never retried twice.
    """
    from jobs.errors import ErrorType

    if status not in BULK_RETRY_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(BULK_RETRY_STATUSES)}")
    if error_type is not None and error_type not in ErrorType.values:
        raise InvalidInput(f"error type must be one of {', '.join(ErrorType.values)}")
    qs = AIJob.objects.filter(status=status)
    if error_type is not None:
        qs = qs.filter(error_type=error_type)
    if since is not None:
        qs = qs.filter(finished_at__gte=since)
    job_ids = list(qs.order_by("finished_at", "id").values_list("id", flat=True))
    report = BulkRetryReport(matched=len(job_ids), retried=[], conflicted=[], dry_run=dry_run)
    if dry_run:
        report.retried = [str(job_id) for job_id in job_ids]
        return report
    for done, job_id in enumerate(job_ids, start=1):
        try:
            job_retry(job_id=job_id)
            report.retried.append(str(job_id))
        except (Conflict, NotFound):
            report.conflicted.append(str(job_id))
        if on_progress is not None:
            on_progress(done, len(job_ids))
    return report
