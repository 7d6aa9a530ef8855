"""AIPBThreadedWorker: many attempts at once in one real worker process, with RQ's bookkeeping, a pause, a
SIGTERM and a SIGKILL mid-run, and the books balanced after each (tests/e2e/books.check_books)."""

from __future__ import annotations

import signal
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client

from jobs.models import FINAL_STATUSES, AIJob, AttemptOutcome, JobAttempt, JobStatus
from jobs.queue_control import queue_pause, queue_resume, queue_status
from jobs.recovery import jobs_reconcile
from tests.e2e.books import check_books, metric_sum
from tests.factories import submit_job
from tests.ops.conftest import wait_for
from tests.ops.conftest import worker_process as worker_process  # the fixture, shared with tests/ops

THREADED = "jobs.threaded_worker.AIPBThreadedWorker"


def max_overlap(intervals) -> int:
    """How many attempts ran at the same moment, at most (from the rows, not from a clock in the test)."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def attempt_intervals():
    return list(JobAttempt.objects.values_list("started_at", "finished_at"))


def db_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        return cursor.fetchone()[0]


def pending() -> int:
    return AIJob.objects.exclude(status__in=FINAL_STATUSES).count()


@pytest.fixture
def threaded(worker_process):
    def start(*, threads: int, pool: int = 10, **env):
        return worker_process(
            worker_class=THREADED,
            worker_ttl=60,
            AI_WORKER_THREADS=str(threads),
            DATABASE_POOL_MAX_SIZE=str(pool),
            **env,
        )

    return start


def test_three_hundred_one_second_calls_run_a_hundred_at_a_time_in_one_process(threaded, user, redis_conn):
    jobs = [submit_job(user, simulate={"latency_ms": 1000}) for _ in range(300)]
    # connections to the test database before the worker starts: this process's own, and any an earlier test's
    # threads left open (they close when collected, not when the thread ends)
    before = db_connections()
    worker = threaded(threads=100, pool=8)
    peak_connections = 0
    deadline = time.monotonic() + 90
    while pending() and time.monotonic() < deadline:
        peak_connections = max(peak_connections, db_connections())
        time.sleep(0.2)

    assert pending() == 0, worker.log()[-3000:]
    assert AIJob.objects.filter(status=JobStatus.SUCCEEDED).count() == len(jobs)
    assert JobAttempt.objects.count() == len(jobs)  # one attempt each: nothing lost, nothing run twice
    intervals = attempt_intervals()
    assert max_overlap(intervals) >= 90, "a hundred threads ran about a hundred calls at once"
    first, last = min(s for s, _ in intervals), max(e for _, e in intervals)
    assert last - first < timedelta(seconds=3 * 1 + 4), "three rounds of 1 s calls, plus overhead"
    # the pool bounds the worker's connections whatever the thread count
    assert peak_connections - before <= 8, (peak_connections, before)
    check_books(using="default")
    # RQ's view: one worker, its slots in the gauge, nothing left in the started registry
    assert queue_status()["totals"]["active"] == 0

    def scrape(name, **labels):
        return metric_sum(Client().get("/metrics").content.decode(), name, **labels)

    wait_for(lambda: scrape("ai_worker_slots", state="idle") == 100, timeout=15, what="the slots at the next beat")
    assert scrape("ai_worker_slots", state="busy") == 0 and scrape("ai_workers") == 1


def test_a_pause_stops_the_takes_and_lets_running_attempts_finish(threaded, user, redis_conn):
    jobs = [submit_job(user, simulate={"latency_ms": 1500}) for _ in range(40)]
    threaded(threads=10)
    wait_for(lambda: JobAttempt.objects.count() == 0 and AIJob.objects.filter(status="running").count() == 10)
    queue_pause(by="test", reason="mid-run")
    paused_at = time.monotonic()
    wait_for(lambda: AIJob.objects.filter(status="running").count() == 0, timeout=10, what="running to finish")
    time.sleep(2)  # long enough for a take after the pause to show

    assert AIJob.objects.filter(status=JobStatus.SUCCEEDED).count() == 10
    assert AIJob.objects.filter(status=JobStatus.QUEUED).count() == len(jobs) - 10
    assert time.monotonic() - paused_at < 10
    queue_resume(by="test")
    wait_for(lambda: pending() == 0, timeout=60, what="the rest after the resume")
    check_books(using="default")


def test_sigterm_mid_run_finishes_what_runs_and_keeps_the_books(threaded, user, redis_conn):
    jobs = [submit_job(user, simulate={"latency_ms": 1500}) for _ in range(30)]
    worker = threaded(threads=10, AI_WORKER_SHUTDOWN_GRACE_SECONDS="20")
    wait_for(lambda: AIJob.objects.filter(status="running").count() == 10, what="ten attempts in flight")
    worker.proc.send_signal(signal.SIGTERM)  # the worker alone, as a supervisor's stop does
    worker.proc.wait(timeout=30)

    running = AIJob.objects.filter(status="running").count()
    assert running == 0, "the attempts in flight finished within the grace"
    done = AIJob.objects.filter(status=JobStatus.SUCCEEDED).count()
    assert 10 <= done < len(jobs), "it stopped taking jobs"
    assert not JobAttempt.objects.exclude(outcome=AttemptOutcome.SUCCEEDED).exists()
    assert worker.proc.returncode == 0, worker.log()[-2000:]
    threaded(threads=10)  # a new one drains the rest
    wait_for(lambda: pending() == 0, timeout=60, what="the rest")
    check_books(using="default")


def test_sigkill_mid_run_leaves_every_attempt_to_lease_recovery(threaded, user, redis_conn):
    jobs = [submit_job(user, simulate={"latency_ms": 3000}) for _ in range(20)]
    worker = threaded(threads=10, AI_LEASE_SECONDS="2")
    wait_for(lambda: AIJob.objects.filter(status="running").count() == 10, what="ten attempts in flight")
    worker.kill()
    killed = set(AIJob.objects.filter(status="running").values_list("id", flat=True))
    assert len(killed) == 10
    time.sleep(2.5)  # past their lease

    report = jobs_reconcile(grace_seconds=0)

    assert {str(i) for i in killed} <= set(report.recovered), report.as_dict()
    assert JobAttempt.objects.filter(outcome=AttemptOutcome.ABANDONED).count() == 10
    threaded(threads=10)
    wait_for(lambda: pending() == 0, timeout=60, what="every job to a final state")
    assert AIJob.objects.filter(status=JobStatus.SUCCEEDED).count() == len(jobs)
    check_books(using="default")
