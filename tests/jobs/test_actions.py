"""jobs.actions, the operator's actions on jobs: cancel, retry, delete and bulk retry, as the API, the admin
and the commands call them — who may act on which job, the 409 for a job in the wrong state, and what is
recorded with the change (dead letters resolved, cancels counted, deliveries removed)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY
from rq.job import Job

from aipb.exceptions import Conflict, InvalidInput, NotFound
from dlq.models import DeadLetter
from jobs import actions, pipeline, transitions
from jobs.models import AIJob, JobStatus
from tests.factories import TokenUsageFactory, submit_job

pytestmark = pytest.mark.usefixtures("redis_conn")


def dead(owner, error: str = "auth", **kwargs) -> AIJob:
    job = submit_job(owner, simulate={"fail_attempts": 9, "error": error}, max_attempts=1, **kwargs)
    assert pipeline.run_attempt(str(job.id), job.rq_job_id).startswith("dead")
    job.refresh_from_db()
    return job


def running(owner) -> AIJob:
    job = submit_job(owner)
    return transitions.job_claim(job_id=str(job.id), rq_job_id=job.rq_job_id)


def finished(status: str, *, provider: str = "local", model: str = "local-page") -> float:
    labels = {"provider": provider, "model": model, "status": status}
    return REGISTRY.get_sample_value("ai_jobs_total", labels) or 0.0


def in_redis(rq_job_id: str, conn) -> bool:
    return Job.exists(rq_job_id, connection=conn)


# --------------------------------------------------------------------------- cancel


def test_cancel_a_waiting_job_removes_its_delivery_and_counts_it(
    db, user, redis_conn, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        job = submit_job(user)
    assert in_redis(job.rq_job_id, redis_conn)
    before = finished("canceled")

    with django_capture_on_commit_callbacks(execute=True):
        canceled = actions.job_cancel(job_id=job.id, owner=user)

    assert canceled.status == JobStatus.CANCELED and canceled.finished_at is not None
    assert not in_redis(str(job.id), redis_conn)
    assert finished("canceled") == before + 1


@pytest.mark.parametrize("state", ["running", "succeeded", "dead", "canceled"])
def test_cancel_of_a_job_that_is_not_waiting_is_a_conflict(db, user, state):
    if state == "running":
        job = running(user)
    elif state == "dead":
        job = dead(user)
    else:
        job = submit_job(user)
        if state == "succeeded":
            assert pipeline.run_attempt(str(job.id), job.rq_job_id) == "succeeded"
        else:
            actions.job_cancel(job_id=job.id)
    status_before = AIJob.objects.get(id=job.id).status

    with pytest.raises(Conflict, match=f"is {state}; only queued or retrying jobs can be canceled"):
        actions.job_cancel(job_id=job.id)
    assert AIJob.objects.get(id=job.id).status == status_before == state


# --------------------------------------------------------------------------- who may act on which job


@pytest.mark.parametrize("action", [actions.job_cancel, actions.job_retry, actions.job_delete])
def test_an_owner_reaches_only_their_own_jobs(db, user, other_user, action):
    theirs = dead(other_user) if action is actions.job_retry else submit_job(other_user)
    before = AIJob.objects.filter(id=theirs.id).values().get()

    with pytest.raises(NotFound, match=f"job {theirs.id} not found"):
        action(job_id=theirs.id, owner=user)
    assert AIJob.objects.filter(id=theirs.id).values().get() == before
    action(job_id=theirs.id)  # staff act without an owner


@pytest.mark.parametrize("job_id", ["not-a-uuid", "", None, 42, str(uuid.uuid4())])
@pytest.mark.parametrize("action", [actions.job_cancel, actions.job_retry, actions.job_delete])
def test_a_missing_or_malformed_id_is_not_found(db, action, job_id):
    with pytest.raises(NotFound):
        action(job_id=job_id)


# --------------------------------------------------------------------------- retry


def test_retry_a_dead_job_grants_a_fresh_budget_and_resolves_its_dead_letters(db, user):
    job = dead(user)
    entry = DeadLetter.objects.get(job_uuid=job.id)
    assert entry.status == "open"

    retried = actions.job_retry(job_id=job.id, owner=user)

    assert retried.status == JobStatus.QUEUED and retried.budget_base == retried.attempts == 1
    assert retried.attempts_left == retried.max_attempts == 1
    entry.refresh_from_db()
    assert entry.status == "retried" and entry.resolved_at == retried.updated_at


def test_retry_a_canceled_job(db, user):
    job = submit_job(user)
    actions.job_cancel(job_id=job.id)
    assert actions.job_retry(job_id=job.id).status == JobStatus.QUEUED


@pytest.mark.parametrize("state", ["queued", "running", "succeeded"])
def test_retry_of_a_job_that_is_not_dead_or_canceled_is_a_conflict(db, user, state):
    job = running(user) if state == "running" else submit_job(user)
    if state == "succeeded":
        assert pipeline.run_attempt(str(job.id), job.rq_job_id) == "succeeded"

    with pytest.raises(Conflict, match=f"is {state}; only dead or canceled jobs can be retried"):
        actions.job_retry(job_id=job.id)
    assert AIJob.objects.get(id=job.id).status == state


# --------------------------------------------------------------------------- delete


def test_delete_removes_the_row_and_its_delivery_and_keeps_dead_letters_and_usage(
    db, user, redis_conn, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        waiting = submit_job(user)
        with_letter = dead(user)
    billed = TokenUsageFactory(owner=user, job=with_letter)

    with django_capture_on_commit_callbacks(execute=True):
        actions.job_delete(job_id=waiting.id)
        actions.job_delete(job_id=with_letter.id)

    assert not AIJob.objects.filter(id__in=[waiting.id, with_letter.id]).exists()
    assert not in_redis(waiting.rq_job_id, redis_conn)
    entry = DeadLetter.objects.get(job_uuid=with_letter.id)
    assert entry.job_id is None and entry.payload["job"]["id"] == str(with_letter.id)
    billed.refresh_from_db()
    assert billed.job_id is None and billed.owner == user, "billing records outlive the job"


def test_a_running_job_cannot_be_deleted(db, user):
    job = running(user)
    with pytest.raises(Conflict, match="is running; cancel is not possible and delete must wait"):
        actions.job_delete(job_id=job.id)
    assert AIJob.objects.get(id=job.id).status == JobStatus.RUNNING


# --------------------------------------------------------------------------- bulk retry


def test_bulk_retry_selects_by_status_error_type_and_time(db, user):
    auth = [dead(user, "auth") for _ in range(2)]
    missing_model = dead(user, "model_not_found")
    canceled = submit_job(user)
    actions.job_cancel(job_id=canceled.id)
    AIJob.objects.filter(id=auth[0].id).update(finished_at=timezone.now() - timedelta(days=2))  # time passes

    assert actions.jobs_retry_bulk(error_type="AUTH_ERROR", dry_run=True).as_dict() == {
        "matched": 2,
        "retried": [str(auth[0].id), str(auth[1].id)],  # oldest death first
        "conflicted": [],
        "dry_run": True,
    }
    assert AIJob.objects.filter(status=JobStatus.DEAD).count() == 3, "a dry run changes nothing"

    since = actions.jobs_retry_bulk(error_type="AUTH_ERROR", since=timezone.now() - timedelta(days=1))
    assert since.retried == [str(auth[1].id)]
    rest = actions.jobs_retry_bulk()
    assert sorted(rest.retried) == sorted([str(auth[0].id), str(missing_model.id)]) and rest.matched == 2
    assert actions.jobs_retry_bulk(status=JobStatus.CANCELED).retried == [str(canceled.id)]
    assert set(AIJob.objects.values_list("status", flat=True)) == {JobStatus.QUEUED}
    assert DeadLetter.objects.filter(status="open").count() == 0


def test_bulk_retry_counts_a_job_that_changed_meanwhile_as_a_conflict(db, user):
    first, second = dead(user), dead(user)
    progress = []

    def on_progress(done: int, total: int) -> None:
        progress.append((done, total))
        if done == 1:  # another operator deletes the next job while the bulk retry runs
            actions.job_delete(job_id=second.id)

    report = actions.jobs_retry_bulk(on_progress=on_progress)

    assert (report.retried, report.conflicted) == ([str(first.id)], [str(second.id)])
    assert progress == [(1, 2), (2, 2)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"status": JobStatus.QUEUED}, "status must be one of dead, canceled"),
        ({"status": "exploded"}, "status must be one of dead, canceled"),
        ({"error_type": "NOPE"}, "error type must be one of"),
    ],
)
def test_bulk_retry_refuses_bad_filters(db, user, kwargs, message):
    job = dead(user)
    with pytest.raises(InvalidInput, match=message):
        actions.jobs_retry_bulk(**kwargs)
    assert AIJob.objects.get(id=job.id).status == JobStatus.DEAD
