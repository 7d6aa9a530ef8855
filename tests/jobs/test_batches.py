"""jobs.batches and where a batch finishes (jobs.accounting.batches_settle): once, from every path a job ends by."""

from __future__ import annotations

import threading

from django.db import connection, transaction
from prometheus_client import REGISTRY
from rq.job import Job

from jobs import accounting, actions, transitions
from jobs.batches import batch_submit
from jobs.models import AIJob, Batch, BatchStatus, JobStatus
from jobs.queues import enqueue_delivery, get_queue
from jobs.recovery import jobs_reconcile
from jobs.submission import job_submit


def finished_count(status: str) -> float:
    return REGISTRY.get_sample_value("ai_batches_total", {"status": status}) or 0.0


def submit(owner, n: int = 3) -> Batch:
    return batch_submit(owner=owner, jobs=[{"prompt": f"p{i}"} for i in range(n)])[0]


def test_a_batch_finishes_once_and_is_counted_once(user, redis_conn, transactional_db):
    batch = submit(user, 2)
    before = finished_count("completed")
    AIJob.objects.filter(batch=batch).update(status=JobStatus.SUCCEEDED)
    assert accounting.batches_settle([batch.id])[0].id == batch.id
    assert accounting.batches_settle([batch.id]) == []  # the second caller finds it finished
    batch.refresh_from_db()
    assert batch.status == BatchStatus.COMPLETED and batch.finished_at is not None
    assert finished_count("completed") == before + 1


def test_an_unfinished_job_keeps_its_batch_running(user, redis_conn, transactional_db):
    batch = submit(user, 3)
    AIJob.objects.filter(id=AIJob.objects.filter(batch=batch).first().id).update(status=JobStatus.RUNNING)
    AIJob.objects.filter(batch=batch).exclude(status=JobStatus.RUNNING).update(status=JobStatus.DEAD)
    assert accounting.batches_settle([batch.id]) == []
    assert Batch.objects.get(id=batch.id).finished_at is None


def test_reconcile_finishes_a_batch_nobody_settled(user, redis_conn, transactional_db):
    batch = submit(user, 2)
    other = submit(user, 1)
    AIJob.objects.filter(batch=batch).update(status=JobStatus.SUCCEEDED)  # as if the settling process had died
    jobs_reconcile(grace_seconds=0)
    assert Batch.objects.get(id=batch.id).status == BatchStatus.COMPLETED
    assert Batch.objects.get(id=other.id).status == BatchStatus.RUNNING


def test_deleting_the_last_waiting_job_finishes_its_batch(user, redis_conn, transactional_db):
    batch = submit(user, 2)
    first, last = AIJob.objects.filter(batch=batch).order_by("created_at")
    AIJob.objects.filter(id=first.id).update(status=JobStatus.SUCCEEDED)
    actions.job_delete(job_id=last.id)
    assert Batch.objects.get(id=batch.id).status == BatchStatus.COMPLETED


def test_canceling_a_batchs_last_waiting_job_finishes_it(user, redis_conn, transactional_db):
    batch = submit(user, 2)
    first, last = AIJob.objects.filter(batch=batch).order_by("created_at")
    AIJob.objects.filter(id=first.id).update(status=JobStatus.DEAD)
    actions.job_cancel(job_id=last.id)
    assert Batch.objects.get(id=batch.id).status == BatchStatus.COMPLETED


def test_a_batch_delivery_is_the_rq_job_a_single_submission_makes(user, redis_conn, transactional_db):
    batch = submit(user, 1)
    job = AIJob.objects.get(batch=batch)
    ours = Job.fetch(job.rq_job_id, connection=redis_conn)
    enqueue_delivery(job_id="single", rq_job_id="single", priority="normal", provider=job.provider)
    single = Job.fetch("single", connection=redis_conn)
    for attribute in ("func_name", "timeout", "result_ttl", "failure_ttl", "origin"):
        assert getattr(ours, attribute) == getattr(single, attribute), attribute
    assert ours.args == (str(job.id), job.rq_job_id, job.provider) and ours.kwargs == {}
    assert set(get_queue("ai-default").job_ids) == {job.rq_job_id, "single"}


def test_a_batch_job_row_is_the_row_job_submit_writes(user, redis_conn, transactional_db):
    fields = {"prompt": "same", "provider": "simulated", "model": "sim-small", "options": {"temperature": 0.5}}
    batch = batch_submit(owner=user, jobs=[{**fields, "priority": "high", "max_attempts": 2}])[0]
    single, _ = job_submit(owner=user, **fields, priority="high", max_attempts=2)
    ours = AIJob.objects.filter(batch=batch).values().get()
    theirs = AIJob.objects.filter(id=single.id).values().get()
    differ = {"id", "rq_job_id", "created_at", "updated_at", "batch_id"}
    assert {k: v for k, v in ours.items() if k not in differ} == {k: v for k, v in theirs.items() if k not in differ}
    assert ours["rq_job_id"] == str(ours["id"]) and ours["batch_id"] == batch.id
    assert AIJob.objects.get(batch=batch).options == {"temperature": 0.5}


def test_the_last_two_jobs_ending_at_once_finish_their_batch_exactly_once(user, redis_conn, transactional_db):
    """Both ends are written, uncommitted, before either commits: neither transaction can see the other's job
    final. The settle after each commit reads a fresh snapshot, so the later one finishes the batch, once."""
    batch = submit(user, 2)
    jobs = list(AIJob.objects.filter(batch=batch))
    before = finished_count("completed")
    both_written = threading.Barrier(2, timeout=30)
    won: list[int] = []

    def end(job: AIJob) -> None:
        try:
            with transaction.atomic():
                assert transitions.job_cancel_waiting(job=job)
                both_written.wait()
            won.append(len(accounting.batches_settle([batch.id])))
        finally:
            connection.close()

    threads = [threading.Thread(target=end, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(won) == [0, 1], won
    assert Batch.objects.get(id=batch.id).status == BatchStatus.COMPLETED
    assert finished_count("completed") == before + 1
