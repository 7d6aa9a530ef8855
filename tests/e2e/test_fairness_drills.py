"""Fair sharing with real processes (jobs.fairness): gunicorn, RQ workers and reconcile against a private Postgres
and Redis (tests/e2e/harness.py), the per-user cap on deliveries in flight (AI_USER_MAX_IN_FLIGHT) turned on.

- A heavy user's backlog of slow jobs cannot starve a light user: the light user's one job starts within about
  one call-duration, read from the JobAttempt rows, while the heavy user still has most of its backlog waiting.
- The cap survives the fault drills: a worker SIGKILLed mid-call and a Redis flush leave no slot held, and every
  job still succeeds.
"""

from __future__ import annotations

import time

import pytest

from jobs.models import AIJob, JobAttempt, JobStatus
from tests.e2e.harness import ALIAS, FORKING, SIMPLE, USERNAME, Stack, db_retry, sim_job, wait_for

pytestmark = pytest.mark.e2e

THREADED = "jobs.threaded_worker.AIPBThreadedWorker"
CALL_SECONDS = 2.0


def slots(stack: Stack) -> dict[str, tuple[int, int]]:
    """Per fair-share key: (deliveries admitted, held back), from RQ's rate-limit sets in Redis."""
    conn = stack.servers.redis.client()
    keys = sorted(k.decode() for k in conn.smembers("rq:rl-keys"))
    return {key: (conn.zcard(f"rq:rl:{key}:allowed"), conn.zcard(f"rq:rl:{key}:rate_limited")) for key in keys}


def running(owner: str) -> int:
    return db_retry(lambda: AIJob.objects.using(ALIAS).filter(owner__username=owner, status=JobStatus.RUNNING).count())


def max_overlap(attempts: list[tuple]) -> int:
    return max(sum(1 for s, f in attempts if s <= start < f) for start, _ in attempts)


def test_a_heavy_users_backlog_cannot_starve_a_light_users_job(stack):
    stack.env.update(AI_USER_MAX_IN_FLIGHT="2", AI_WORKER_THREADS="2")
    stack.gunicorn()
    stack.workers((THREADED, THREADED))  # four attempts at once in all
    heavy = [sim_job(f"heavy-{i}", latency_ms=int(CALL_SECONDS * 1000)) for i in range(24)]
    stack.submit(heavy, clients=4)
    wait_for(lambda: running(USERNAME) >= 2, timeout=60, what="the heavy user's first attempts")

    status, body = stack.client(staff=True).request(
        "POST", "/api/ai/jobs", sim_job("light", latency_ms=int(CALL_SECONDS * 1000)).body
    )
    assert status == 201, body
    light_id = body["id"]
    wait_for(
        lambda: db_retry(lambda: JobAttempt.objects.using(ALIAS).filter(job_id=light_id).exists()),
        timeout=60,
        what="the light user's job to start",
    )

    job = AIJob.objects.using(ALIAS).get(id=light_id)
    first = JobAttempt.objects.using(ALIAS).filter(job_id=light_id).order_by("number").first()
    waited = (first.started_at - job.created_at).total_seconds()
    # the heavy user had 22 jobs waiting: without the cap the light job would queue behind them, ~11 s on 4 slots
    assert waited <= CALL_SECONDS + 1.0, f"the light user's job waited {waited:.1f}s"

    stack.wait_final(timeout=24 * CALL_SECONDS + 120)
    heavy_later = JobAttempt.objects.using(ALIAS).filter(
        job__owner__username=USERNAME, number=1, started_at__gt=first.started_at
    )
    assert heavy_later.count() >= 12, "the heavy user's backlog was not waiting: nothing was shown"
    assert stack.status_counts() == {JobStatus.SUCCEEDED: 25}
    attempts = list(
        JobAttempt.objects.using(ALIAS).filter(job__owner__username=USERNAME).values_list("started_at", "finished_at")
    )
    assert len(attempts) == 24 and max_overlap(attempts) <= 2
    wait_for(lambda: all(v == (0, 0) for v in slots(stack).values()), timeout=30, what="every slot released")


def test_a_killed_worker_and_a_redis_flush_leave_no_slot_held(stack):
    stack.env.update(AI_USER_MAX_IN_FLIGHT="1")
    stack.gunicorn()
    forking, _ = stack.workers((FORKING, SIMPLE))
    stack.reconciler(every=2)
    specs = [sim_job(f"slot-{i}", latency_ms=1500) for i in range(8)]
    stack.submit(specs, clients=2)

    # the one slot is held by the forking worker's delivery: kill the worker, horse and all, mid-call
    wait_for(lambda: stack.running_job(forking), timeout=120, what="the forking worker to take a job")
    killed_job = stack.running_job(forking)
    stack.kill_worker(forking)
    wait_for(
        lambda: db_retry(lambda: AIJob.objects.using(ALIAS).get(id=killed_job).attempts >= 2),
        timeout=120,
        what="the killed worker's job to be tried again (lease recovery, its slot released)",
    )

    # then Redis forgets everything: reconcile re-delivers every waiting job, through the cap again
    time.sleep(1)
    stack.servers.redis.flushall()
    stack.wait_final(timeout=240)

    assert stack.status_counts() == {JobStatus.SUCCEEDED: len(specs)}
    attempts = list(JobAttempt.objects.using(ALIAS).values_list("started_at", "finished_at", "outcome"))
    finished = [(s, f) for s, f, outcome in attempts if outcome != "abandoned" and f is not None]
    # the flush forgets the slot of the attempt then in flight, so its successor may overlap it once
    assert max_overlap(finished) <= 2
    wait_for(lambda: all(v == (0, 0) for v in slots(stack).values()), timeout=30, what="every slot released")
