"""jobs.recovery.jobs_reconcile, called as `manage.py reconcile` calls it: waiting rows whose delivery Redis
lost get a new one, running rows past their lease retry or die, each exactly once, and a dry run changes
nothing. (The command's output and the full stories — Redis flushed, a worker killed — are in
tests/ops/test_reconcile.py; which deliveries count as lost is tests/jobs/test_redis_state.py; the metrics
of a lease expiry are tests/jobs/test_accounting.py.)"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rq.registry import ScheduledJobRegistry

from dlq.models import DeadLetter
from jobs import pipeline, transitions
from jobs.models import AIJob, AttemptOutcome, JobAttempt, JobStatus
from jobs.queues import get_queue
from jobs.recovery import RECONCILE_GRACE_SECONDS, jobs_reconcile
from tests.factories import submit_job

NOTHING = {"requeued": [], "recovered": [], "dead": [], "dry_run": False}


def backdate(seconds: float = RECONCILE_GRACE_SECONDS + 60) -> None:
    """Time passes: the rows are older than reconcile's grace period for fresh commits."""
    AIJob.objects.update(updated_at=timezone.now() - timedelta(seconds=seconds))


def rows() -> list[dict]:
    return list(AIJob.objects.order_by("id").values())


@pytest.fixture
def reconcile(django_capture_on_commit_callbacks):
    """jobs_reconcile with its on-commit work (the new deliveries) done, as after a real commit."""

    def run(**kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return jobs_reconcile(**kwargs)

    return run


def test_waiting_rows_whose_delivery_is_gone_are_put_back_once(db, user, redis_conn, reconcile, settings):
    lost = submit_job(user)  # its enqueue never runs: the test's transaction never commits
    retrying = submit_job(user, simulate={"fail_attempts": 1, "error": "rate_limit", "retry_after": 300})
    assert pipeline.run_attempt(str(retrying.id), retrying.rq_job_id).startswith("retrying")
    retrying.refresh_from_db()
    backdate()
    before = rows()

    dry = reconcile(dry_run=True)
    assert dry.dry_run and sorted(dry.requeued) == sorted([str(lost.id), str(retrying.id)])
    assert rows() == before and redis_conn.keys("rq:job:*") == []

    report = reconcile()

    assert sorted(report.requeued) == sorted([str(lost.id), str(retrying.id)])
    assert (report.recovered, report.dead) == ([], [])
    lost.refresh_from_db()
    assert (lost.status, lost.deliveries, lost.rq_job_id) == (JobStatus.QUEUED, 2, f"{lost.id}_2")
    assert get_queue("ai-default").job_ids == [lost.rq_job_id]
    # the retry keeps its Retry-After: delivered when it was due, not now
    retrying.refresh_from_db()
    assert retrying.status == JobStatus.RETRYING and retrying.attempts == 1
    assert retrying.rq_job_id in ScheduledJobRegistry(queue=get_queue("ai-default")).get_job_ids()
    backdate()
    assert reconcile().as_dict() == NOTHING, "nothing is lost any more"


def test_fresh_rows_and_live_deliveries_are_left_alone(
    db, user, redis_conn, reconcile, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        delivered = submit_job(user)
    backdate()  # old enough to be judged, and its delivery waits in its queue
    just_committed = submit_job(user)  # no delivery, but young: it may be between its commit and its enqueue
    before = rows()

    assert reconcile().as_dict() == NOTHING
    assert rows() == before and get_queue("ai-default").job_ids == [str(delivered.id)]
    assert reconcile(grace_seconds=0).requeued == [str(just_committed.id)]


def test_an_expired_lease_with_attempts_left_is_recovered_once(db, user, redis_conn, reconcile, settings):
    settings.AI_LEASE_SECONDS = 0  # the lease is over as soon as it is taken
    job = submit_job(user, max_attempts=2)
    job = transitions.job_claim(job_id=str(job.id), rq_job_id=job.rq_job_id)
    before = rows()

    dry = reconcile(dry_run=True)
    assert dry.recovered + dry.dead == [str(job.id)] and rows() == before

    report = reconcile()

    assert (report.recovered, report.dead, report.requeued) == ([str(job.id)], [], [])
    job.refresh_from_db()
    assert (job.status, job.error_type, job.lease_expires_at) == (JobStatus.RETRYING, "TIMEOUT", None)
    assert get_queue("ai-default").job_ids == [f"{job.id}_2"], "delivered again at once"
    [attempt] = JobAttempt.objects.filter(job=job)
    assert (attempt.outcome, attempt.error_type) == (AttemptOutcome.ABANDONED, "TIMEOUT")
    assert reconcile().as_dict() == NOTHING

    # the next delivery runs it to success; the abandoned attempt stays on record
    assert pipeline.run_attempt(str(job.id), job.rq_job_id) == "succeeded"
    assert list(JobAttempt.objects.filter(job=job).values_list("number", "outcome")) == [
        (1, AttemptOutcome.ABANDONED),
        (2, AttemptOutcome.SUCCEEDED),
    ]


def test_an_expired_lease_without_attempts_left_dies_with_a_dead_letter(db, user, redis_conn, reconcile, settings):
    settings.AI_LEASE_SECONDS = 0
    job = submit_job(user, max_attempts=1)
    transitions.job_claim(job_id=str(job.id), rq_job_id=job.rq_job_id)

    report = reconcile()

    assert (report.dead, report.recovered) == ([str(job.id)], [])
    job.refresh_from_db()
    assert job.status == JobStatus.DEAD and job.finished_at is not None
    [entry] = DeadLetter.objects.filter(job_uuid=job.id)
    assert (entry.status, entry.error_type, entry.retryable, entry.attempts) == ("open", "TIMEOUT", True, 1)
    assert [(a["number"], a["outcome"]) for a in entry.payload["attempt_history"]] == [(1, "abandoned")]
    assert get_queue("ai-default").job_ids == [] and reconcile().as_dict() == NOTHING


def test_a_running_job_within_its_lease_is_left_alone(db, user, redis_conn, reconcile):
    job = submit_job(user)
    transitions.job_claim(job_id=str(job.id), rq_job_id=job.rq_job_id)
    backdate()
    before = rows()
    assert reconcile().as_dict() == NOTHING and rows() == before
