"""Recovery: `manage.py reconcile` after Redis lost everything and after a worker was killed mid-job.

Either way every job ends with exactly one success: one succeeded attempt, one result, one billed
successful call — and a second reconcile finds nothing to do.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from jobs.models import AIJob, AttemptOutcome, JobAttempt, JobStatus
from jobs.queues import all_queues
from tests.factories import submit_job
from tests.ops.conftest import sim, wait_for
from usage.models import TokenUsage

pytestmark = pytest.mark.django_db(transaction=True)


def reconcile(*args) -> dict:
    out = StringIO()
    call_command("reconcile", "--json", *args, stdout=out)
    return json.loads(out.getvalue())


def assert_exactly_one_success(job) -> AIJob:
    row = AIJob.objects.get(id=job.id)
    assert row.status == JobStatus.SUCCEEDED, (row.status, row.error_message)
    assert row.result and row.result.get("sections")
    outcomes = list(JobAttempt.objects.filter(job=row).values_list("outcome", flat=True))
    assert outcomes.count(AttemptOutcome.SUCCEEDED) == 1, outcomes
    successful = JobAttempt.objects.get(job=row, outcome=AttemptOutcome.SUCCEEDED).number
    assert list(TokenUsage.objects.filter(job=row, attempt=successful).values_list("attempt", flat=True)) == [
        successful
    ]
    return row


def backdate(seconds: float = 120) -> None:
    """Time passes: the rows are older than reconcile's grace period for fresh commits."""
    AIJob.objects.update(updated_at=timezone.now() - timedelta(seconds=seconds))


def test_reconcile_after_redis_lost_everything(user, run_worker, redis_conn, settings):
    retrying = submit_job(user, **sim(fail_attempts=1, error="unavailable", retry_after=1))
    run_worker(until=lambda: AIJob.objects.get(id=retrying.id).status == JobStatus.RETRYING)
    queued = [submit_job(user), submit_job(user, priority="high"), submit_job(user, priority="low")]
    jobs = [retrying, *queued]

    redis_conn.flushdb()  # FLUSHALL of our database: every queue, registry and RQ job is gone
    assert all(q.count == 0 for q in all_queues())
    backdate()
    rows_before = list(AIJob.objects.order_by("id").values_list("id", "status", "rq_job_id"))

    dry = reconcile("--dry-run")
    assert dry["dry_run"] is True and sorted(dry["requeued"]) == sorted(str(j.id) for j in jobs)
    assert list(AIJob.objects.order_by("id").values_list("id", "status", "rq_job_id")) == rows_before
    assert all(q.count == 0 for q in all_queues())

    report = reconcile()
    assert sorted(report["requeued"]) == sorted(str(j.id) for j in jobs)
    assert report["recovered"] == [] and report["dead"] == []
    # each put back once, under a new delivery id
    for job in jobs:
        row = AIJob.objects.get(id=job.id)
        assert row.rq_job_id != dict((i, r) for i, _, r in rows_before)[row.id]
    assert reconcile()["requeued"] == []  # nothing lost any more: the second run does nothing

    run_worker()

    for job in queued:
        assert assert_exactly_one_success(job).attempts == 1
    row = assert_exactly_one_success(retrying)
    assert list(JobAttempt.objects.filter(job=row).values_list("outcome", flat=True)) == ["failed", "succeeded"]
    backdate()
    assert reconcile() == {"requeued": [], "recovered": [], "dead": [], "dry_run": False}


def test_reconcile_command_says_what_it_did(user, redis_conn):
    job = submit_job(user)
    redis_conn.flushdb()
    backdate()
    out = StringIO()
    call_command("reconcile", "--dry-run", stdout=out)
    assert "would put back 1 lost from Redis" in out.getvalue() and str(job.id) in out.getvalue()
    out = StringIO()
    call_command("reconcile", stdout=out)
    assert out.getvalue().startswith("reconcile: put back 1 lost from Redis, 0 from dead workers")


@pytest.mark.parametrize("victim", ["work-horse", "worker"])
def test_reconcile_after_a_worker_is_killed_mid_job(user, worker_process, redis_conn, victim):
    # a short lease in the worker that dies, so the lost attempt is found within the test
    worker = worker_process(with_scheduler=False, AI_LEASE_SECONDS="1")
    slow = submit_job(user, **sim(latency_ms=3000))
    others = [submit_job(user, **sim(latency_ms=100)) for _ in range(2)]

    wait_for(lambda: AIJob.objects.get(id=slow.id).status == JobStatus.RUNNING, what="the slow job to start")
    if victim == "work-horse":
        wait_for(worker.children, what="the work-horse")
        [horse] = worker.children()
        os.kill(horse, signal.SIGKILL)
    else:
        worker.kill()
    killed_at = timezone.now()

    if victim == "worker":
        assert AIJob.objects.get(id=slow.id).status == JobStatus.RUNNING
        # nothing runs until a worker comes back (and the new one keeps a normal lease)
        replacement = worker_process(with_scheduler=False)
    else:
        replacement = worker  # the worker survives its horse and carries on with the queue
    wait_for(
        lambda: all(AIJob.objects.get(id=j.id).status == JobStatus.SUCCEEDED for j in others),
        timeout=30,
        what="the other jobs",
    )
    # the killed attempt is still "running" in Postgres until its lease runs out
    row = AIJob.objects.get(id=slow.id)
    assert (
        row.status == JobStatus.RUNNING
        and row.attempts == 1
        and row.lease_expires_at <= killed_at + timedelta(seconds=1)
    )

    wait_for(lambda: timezone.now() > row.lease_expires_at, what="the lease to expire")
    report = reconcile()
    assert report["recovered"] == [str(slow.id)] and report["requeued"] == [] and report["dead"] == []
    assert reconcile()["recovered"] == []  # put back exactly once

    wait_for(
        lambda: AIJob.objects.get(id=slow.id).status == JobStatus.SUCCEEDED,
        timeout=30,
        what=f"the recovered job to succeed\n{replacement.log()}",
    )
    row = assert_exactly_one_success(slow)
    attempts = list(JobAttempt.objects.filter(job=row).order_by("number").values_list("number", "outcome"))
    assert attempts == [(1, AttemptOutcome.ABANDONED), (2, AttemptOutcome.SUCCEEDED)]
    for job in others:
        assert_exactly_one_success(job)
    backdate()
    assert reconcile() == {"requeued": [], "recovered": [], "dead": [], "dry_run": False}
