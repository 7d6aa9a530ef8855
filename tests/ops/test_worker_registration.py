"""A worker Redis has forgotten (restarted empty, flushed) lists itself again, so `ai_workers`, the
NoAIWorkers alert and the queue page tell the truth without every worker being restarted
(jobs.worker.ResilienceMixin.heartbeat). Real worker processes against the test Redis database."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.test import Client
from rq.utils import utcformat

from jobs.models import AIJob, JobStatus
from jobs.queue_control import queue_status
from jobs.queues import QUEUE_ORDER
from jobs.recovery import jobs_reconcile
from jobs.threaded_worker import AIPBThreadedWorker
from tests.e2e.books import metric_sum
from tests.ops.conftest import sim, submit, wait_for

SIMPLE = "jobs.worker.AIPBSimpleWorker"
FORKING = "jobs.worker.AIPBWorker"
THREADED = "jobs.threaded_worker.AIPBThreadedWorker"


def listed(worker) -> dict | None:
    """The worker as the queue page and `manage.py queue` list it."""
    return next((w for w in queue_status()["workers"] if w["pid"] == worker.pid), None)


def ai_workers(**labels: str) -> float:
    return metric_sum(Client().get("/metrics").content.decode(), "ai_workers", **labels)


# Not asserted: that the worker is unlisted right after the flush. It is, but its heartbeat may list it again
# before the test looks; "registered it again" in its log is the proof it was forgotten and came back.


@pytest.mark.parametrize("worker_class", [SIMPLE, FORKING])
def test_a_worker_redis_forgot_lists_itself_again_at_its_next_job(worker_class, worker_process, redis_conn, user):
    worker = worker_process(worker_class=worker_class, worker_ttl=300)  # idle heartbeat only every 60 s
    # RQ lists a starting worker a moment before it writes its state, which ai_workers needs
    wait_for(lambda: ai_workers() == 1, what="ai_workers to count the worker")
    redis_conn.flushdb()

    job = submit(user, **sim())
    wait_for(lambda: AIJob.objects.get(id=job.id).status == JobStatus.SUCCEEDED, what="the job to succeed")
    wait_for(lambda: listed(worker) is not None, what="the worker to list itself again")
    entry = listed(worker)
    assert entry["queues"] == ["ai-high", "ai-default", "ai-low"] and entry["last_heartbeat"]
    assert ai_workers() == 1 and ai_workers(state="idle") == 1
    assert worker.log().count("registered it again") == 1  # once: later heartbeats find it listed


def test_a_busy_threaded_worker_redis_forgot_lists_itself_again_within_seconds(worker_process, redis_conn, user):
    """The threaded worker beats at most once a second (HEARTBEAT_SECONDS): the beat that finds it forgotten may
    come a second after its next job, or at its next short BLPOP (DEQUEUE_SECONDS) once idle."""
    worker = worker_process(worker_class=THREADED, worker_ttl=300)
    wait_for(lambda: ai_workers() == 1, what="ai_workers to count the worker")
    redis_conn.flushdb()

    jobs = [submit(user, **sim()) for _ in range(3)]
    wait_for(lambda: AIJob.objects.filter(status=JobStatus.SUCCEEDED).count() == len(jobs), what="the jobs")
    wait_for(lambda: listed(worker) is not None, timeout=AIPBThreadedWorker.DEQUEUE_SECONDS + 3, what="relisting")
    assert listed(worker)["queues"] == ["ai-high", "ai-default", "ai-low"]
    assert worker.log().count("registered it again") == 1


def test_a_threaded_worker_beats_at_most_once_a_second_unless_asked_for_longer(redis_conn):
    worker = AIPBThreadedWorker(list(QUEUE_ORDER), connection=redis_conn, threads=2)
    worker.HEARTBEAT_SECONDS = 0.5
    worker.register_birth()
    try:
        worker.heartbeat()
        redis_conn.hdel(worker.key, "last_heartbeat")
        worker.heartbeat()  # within the interval, no longer a TTL: nothing sent
        assert redis_conn.hget(worker.key, "last_heartbeat") is None
        worker.heartbeat(worker.worker_ttl + 600)  # a longer TTL than the last beat gave: sent at once
        assert redis_conn.hget(worker.key, "last_heartbeat") is not None
        assert redis_conn.ttl(worker.key) > worker.worker_ttl + 500
        redis_conn.hdel(worker.key, "last_heartbeat")
        time.sleep(0.6)
        worker.heartbeat()  # the interval has passed
        assert redis_conn.hget(worker.key, "last_heartbeat") is not None
        with redis_conn.pipeline() as pipe:  # a beat inside RQ's own pipeline around a job is never skipped
            worker.heartbeat(pipeline=pipe)
            assert len(pipe.command_stack) > 0
    finally:
        worker.register_death()


def test_an_idle_worker_redis_forgot_lists_itself_again_within_a_heartbeat(worker_process, redis_conn):
    worker = worker_process(worker_class=SIMPLE, worker_ttl=20)  # idle heartbeat every 5 s
    name = listed(worker)["name"]
    redis_conn.flushdb()

    wait_for(lambda: "registered it again" in worker.log(), timeout=15, what="the idle worker's next heartbeat")
    assert listed(worker) is not None and ai_workers() == 1
    # the hash it wrote again expires like RQ's own: a worker that dies later must not be counted forever
    assert 0 < redis_conn.ttl(f"rq:worker:{name}") <= 20 + 60


def test_a_killed_worker_stops_counting_and_reconcile_unregisters_it(worker_process, redis_conn):
    """SIGKILL leaves RQ's registration behind for the hash's whole TTL (7-8 minutes): a worker whose heartbeat
    is older than AI_WORKER_GONE_SECONDS is not counted, not listed, and reconcile unregisters it."""
    alive = worker_process(worker_class=SIMPLE, worker_ttl=300)
    killed = worker_process(worker_class=SIMPLE, worker_ttl=300)
    wait_for(lambda: ai_workers() == 2, what="ai_workers to count both workers")
    key = f"rq:worker:{listed(killed)['name']}"
    killed.kill()
    assert redis_conn.sismember("rq:workers", key) and ai_workers() == 2  # what RQ alone would go on saying

    # the time since its last heartbeat, as it is AI_WORKER_GONE_SECONDS after the kill
    gone_since = datetime.now(UTC) - timedelta(seconds=settings.AI_WORKER_GONE_SECONDS + 1)
    redis_conn.hset(key, "last_heartbeat", utcformat(gone_since))

    assert ai_workers() == 1 and ai_workers(state="idle") == 1
    assert listed(killed) is None and listed(alive) is not None
    jobs_reconcile()
    assert not redis_conn.sismember("rq:workers", key) and not redis_conn.exists(key)
    assert not any(redis_conn.sismember(f"rq:workers:{name}", key) for name in QUEUE_ORDER)
    assert listed(alive) is not None and ai_workers() == 1  # the live one is left alone
