"""jobs.queues, RQ transport in Redis: queue names, deliveries put on and taken off, sizes, the pause flag.

The sizes are what queue status, the operations page and the ai_queue_size gauge show
(tests/monitoring/test_metrics.py checks the gauge reports them)."""

from __future__ import annotations

import json
import time

import pytest
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry

from jobs import queues
from jobs.models import AIJob, JobStatus
from jobs.queues import get_queue
from tests.factories import submit_job


def test_queue_names_and_order_are_the_settings(settings):
    assert queues.QUEUE_ORDER == ("ai-high", "ai-default", "ai-low")
    assert [queues.queue_name(p) for p in ("high", "normal", "low")] == list(queues.QUEUE_ORDER)
    assert queues.QUEUE_ORDER == tuple(settings.AI_QUEUES[p] for p in queues.QUEUE_PRIORITY_ORDER)


def test_queue_sizes_come_from_rq(user, run_worker, redis_conn):
    delayed = submit_job(user, simulate={"fail_attempts": 1, "error": "rate_limit", "retry_after": 300})
    run_worker(until=lambda: AIJob.objects.get(id=delayed.id).status == JobStatus.RETRYING)  # retry in 300 s
    waiting = [submit_job(user) for _ in range(3)]
    failed = Job.create("jobs.rq_jobs.run_job", args=("x", "x"), connection=redis_conn, id="rq-failed-1")
    failed.save()
    FailedJobRegistry(queue=get_queue("ai-low")).add(failed, ttl=600)
    expired = Job.create("jobs.rq_jobs.run_job", args=("y", "y"), connection=redis_conn, id="rq-failed-old")
    expired.save()
    FailedJobRegistry(queue=get_queue("ai-low")).add(expired, ttl=-2)  # -2 s: already expired
    redis_conn.rpush(Queue.redis_queue_namespace_prefix + "some-other-app", "not-ours")

    per_queue = queues.queue_sizes(redis_conn)
    sizes = queues.sizes_total(per_queue)

    assert sizes == {"waiting": len(waiting), "active": 0, "delayed": 1, "completed": 1, "failed": 1}
    assert list(per_queue) == list(queues.QUEUE_ORDER)
    assert per_queue["ai-low"]["failed"] == 1 and per_queue["ai-default"]["waiting"] == 3


def test_queue_sizes_count_completed_deliveries(user, run_worker, redis_conn):
    for _ in range(2):
        submit_job(user)
    run_worker()
    sizes = queues.sizes_total(queues.queue_sizes(redis_conn))
    assert sizes["completed"] == 2
    assert sizes["waiting"] == 0


def test_a_delayed_delivery_is_scheduled_never_early(redis_conn):
    before = time.time()
    queues.enqueue_delivery(job_id="job-1", rq_job_id="job-1_2", priority="low", delay=0.2)

    run_at = redis_conn.zscore(ScheduledJobRegistry(queue=get_queue("ai-low")).key, "job-1_2")
    # RQ keeps whole seconds, rounded down: rounded up instead, so a Retry-After is never cut short
    assert run_at == int(run_at) and before + 0.2 <= run_at <= before + 2.2
    assert get_queue("ai-low").job_ids == []
    rq_job = Job.fetch("job-1_2", connection=redis_conn)
    assert rq_job.args == ("job-1", "job-1_2", None) and rq_job.func_name == "jobs.rq_jobs.run_job"


def test_a_delivery_carries_ids_and_the_provider(redis_conn, settings):
    queues.enqueue_delivery(job_id="job-2", rq_job_id="job-2", priority="high", provider="simulated")
    [rq_job] = get_queue("ai-high").jobs
    assert rq_job.args == ("job-2", "job-2", "simulated")
    assert rq_job.timeout == int(settings.AI_LEASE_SECONDS) + 30, "RQ's timeout outlasts our lease"


def test_deleting_deliveries(redis_conn):
    for rq_id in ("d-1", "d-2", "d-3"):
        queues.enqueue_delivery(job_id=rq_id, rq_job_id=rq_id, priority="normal")

    queues.delivery_delete("d-1")
    queues.delivery_delete("d-1")  # already gone: nothing to do, no error
    assert get_queue("ai-default").job_ids == ["d-2", "d-3"]

    taken = queues.take_out(redis_conn, queues.list_key("ai-default"), ["d-2", "d-3", "never-there"], kind="list")
    assert taken == ["d-2", "d-3"], "only the ids that were still there"
    queues.deliveries_delete(redis_conn, [*taken, "never-there"])
    assert redis_conn.keys("rq:job:*") == [] and get_queue("ai-default").job_ids == []


def test_batched_splits_without_losing_any():
    assert list(queues.batched(list("abcde"), 2)) == [["a", "b"], ["c", "d"], ["e"]]
    assert list(queues.batched([], 2)) == []


def test_the_pause_flag_keeps_the_first_pauses_details(redis_conn):
    assert queues.is_paused(redis_conn) is False
    assert queues.pause_set(redis_conn, by="ops", at="2026-01-01T00:00:00+00:00", reason="bad deploy") is True
    assert queues.pause_set(redis_conn, by="someone else", at="2026-01-01T01:00:00+00:00", reason="") is False
    assert queues.is_paused(redis_conn) is True
    assert queues.pause_info(redis_conn) == {
        "paused_by": "ops",
        "paused_at": "2026-01-01T00:00:00+00:00",
        "reason": "bad deploy",
    }
    assert queues.pause_clear(redis_conn) is True
    assert queues.pause_clear(redis_conn) is False
    assert queues.is_paused(redis_conn) is False
    assert queues.pause_info(redis_conn) == {"paused_by": "", "paused_at": None, "reason": ""}


@pytest.mark.parametrize("stored", ["{not json", json.dumps({"unexpected": 1})])
def test_pause_details_that_cannot_be_read_are_blank(redis_conn, stored):
    redis_conn.set(queues.PAUSE_INFO_KEY, stored)
    assert queues.pause_info(redis_conn) == {"paused_by": "", "paused_at": None, "reason": ""}
