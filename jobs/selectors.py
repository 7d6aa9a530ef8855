"""Reads for jobs."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import Count, QuerySet, prefetch_related_objects
from django.utils import timezone

from aipb.api import PreparedGet
from aipb.exceptions import NotFound
from jobs.models import AIJob, JobAttempt, JobStatus

LIST_FILTERS = ("status", "provider", "model", "priority", "error_type")


def job_list(*, user: AbstractBaseUser, filters: dict | None = None) -> QuerySet[AIJob]:
    """Owners see their own jobs, staff see all; newest first."""
    qs = AIJob.objects.select_related("owner").defer("result")
    if not user.is_staff:
        qs = qs.filter(owner=user)
    for key, value in (filters or {}).items():
        if key in LIST_FILTERS and value not in (None, ""):
            qs = qs.filter(**{key: value})
    return qs.order_by("-created_at", "-id")


# A job with its owner, by id (staff) or by id and owner: one join each, its SQL written once per process.
_JOB = PreparedGet(AIJob, related="owner", where=("id",))
_OWN_JOB = PreparedGet(AIJob, related="owner", where=("id", "owner"))


def job_get(*, user: AbstractBaseUser, job_id: object, with_attempts: bool = True) -> AIJob:
    """The job with its owner and, with_attempts, its attempts fetched: not when it never had one (``attempts``
    counts every attempt of its life, each JobAttempt row is one of them), which saves a queued job's poll a
    query; reading ``attempt_set`` then still answers, by asking."""
    try:
        job = _JOB.get(id=job_id) if user.is_staff else _OWN_JOB.get(id=job_id, owner=user)
    except ValueError:
        job = None
    if job is None:
        raise NotFound(f"job {job_id} not found")
    if with_attempts and job.attempts:
        prefetch_related_objects([job], "attempt_set")
    return job


def job_metrics(*, since, until=None) -> dict:
    """Job and attempt figures over [since, until), every number computed by the database.

    Jobs count by creation time; attempts (retries, processing time, validation, errors) by start time.
    success_rate is succeeded / (succeeded + dead): jobs still waiting or canceled decided nothing.
    """
    until = until or timezone.now()
    by_status = dict.fromkeys(JobStatus.values, 0)
    rows = (
        AIJob.objects.filter(created_at__gte=since, created_at__lt=until)
        .values_list("status")
        .annotate(n=Count("id"))
        .order_by("status")
    )
    by_status.update({status: n for status, n in rows})
    decided = by_status[JobStatus.SUCCEEDED] + by_status[JobStatus.DEAD]

    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT count(*),
                   count(*) FILTER (WHERE number > 1),
                   avg(latency_ms)::float8,
                   percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_ms),
                   count(validation_passed),
                   count(*) FILTER (WHERE validation_passed)
              FROM {JobAttempt._meta.db_table}
             WHERE started_at >= %s AND started_at < %s
            """,
            [since, until],
        )
        attempts, retries, avg_ms, percentiles, checked, passed = cursor.fetchone()
    p50, p95, p99 = percentiles or (None, None, None)
    errors = (
        JobAttempt.objects.filter(started_at__gte=since, started_at__lt=until)
        .exclude(error_type="")
        .values_list("error_type")
        .annotate(n=Count("id"))
        .order_by("error_type")
    )
    by_type = {error_type: n for error_type, n in errors}

    def ratio(part: int, whole: int) -> float | None:
        return round(part / whole, 4) if whole else None

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        "since": since,
        "until": until,
        "jobs": {"total": sum(by_status.values()), "by_status": by_status},
        "success_rate": ratio(by_status[JobStatus.SUCCEEDED], decided),
        "attempts": attempts,
        "retries": retries,
        "processing_time_ms": {"avg": ms(avg_ms), "p50": ms(p50), "p95": ms(p95), "p99": ms(p99)},
        "validation": {"checked": checked, "passed": passed, "pass_rate": ratio(passed, checked)},
        "errors": {"total": sum(by_type.values()), "by_type": by_type},
    }
