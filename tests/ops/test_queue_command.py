"""`manage.py queue status|pause|resume|clear` against real Postgres, Redis and worker processes."""

from __future__ import annotations

import json
import re
import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry
from rq.suspension import is_suspended, resume

from dlq.models import DeadLetter
from jobs import queue_control
from jobs.models import AIJob, JobAttempt, JobStatus
from jobs.queues import all_queues, get_queue
from tests.ops.conftest import sim, submit, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class Terminal(StringIO):
    """Output that says it is a terminal: progress is shown only there."""

    def isatty(self) -> bool:
        return True


def run(*args, tty: bool = False) -> str:
    out = Terminal() if tty else StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


def statuses(*jobs) -> list[str]:
    return [AIJob.objects.get(id=job.id).status for job in jobs]


def redis_snapshot(conn) -> dict:
    """Every key in the test Redis database with its type and size: to show a refused command changed nothing."""
    snapshot = {}
    for key in conn.scan_iter(count=1000):
        kind = conn.type(key).decode()
        if key.startswith(b"rq:worker") or key.startswith(b"rq:scheduler") or key == b"rq:workers":
            continue
        size = {"list": conn.llen, "zset": conn.zcard, "set": conn.scard, "hash": conn.hlen}.get(kind)
        snapshot[key] = (kind, size(key) if size else None)
    return snapshot


def db_snapshot() -> list[tuple]:
    return list(AIJob.objects.order_by("id").values_list("id", "status", "rq_job_id", "attempts", "deliveries"))


# --- status ---


def test_status_counts_every_status_and_json_is_the_api_object(user, staff_api, run_worker, redis_conn):
    done = submit(user)
    delayed = submit(user, **sim(fail_attempts=1, error="rate_limit", retry_after=30))
    run_worker(until=lambda: statuses(done, delayed) == [JobStatus.SUCCEEDED, JobStatus.RETRYING])
    waiting = [submit(user), submit(user, priority="high"), submit(user, priority="low")]

    status = json.loads(run("queue", "status", "--json"))

    assert status["paused"] is False
    assert status["totals"] == {
        "waiting": 3,
        "active": 0,
        "delayed": 1,
        "completed": FinishedJobRegistry(queue=get_queue("ai-default")).count,
        "failed": 0,
    }
    assert status["totals"]["completed"] == 2  # done, and the delayed job's first delivery
    by_name = {q["name"]: q for q in status["queues"]}
    assert [by_name[n]["waiting"] for n in ("ai-high", "ai-default", "ai-low")] == [1, 1, 1]
    assert by_name["ai-default"]["delayed"] == 1
    assert status["jobs"] == {"queued": 3, "running": 0, "retrying": 1}
    assert status["workers"] == [] and status["worker_count"] == 0
    assert staff_api.get("/api/ai/queue").json() == status
    assert AIJob.objects.get(id=done.id).status == JobStatus.SUCCEEDED
    assert all(AIJob.objects.get(id=j.id).status == JobStatus.QUEUED for j in waiting)

    table = run("queue", "status")
    assert "running (workers take jobs)" in table
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("QUEUE"))
    assert header.split() == ["QUEUE", "WAITING", "ACTIVE", "DELAYED", "COMPLETED", "FAILED"]
    total = next(line for line in lines if line.startswith("total"))
    assert total.split()[1:4] == ["3", "0", "1"]
    # aligned: every row's numbers start in the header's columns
    assert all(len(line) <= len(header) + 10 for line in lines if line.startswith("ai-"))
    assert "Postgres: 3 queued, 0 running, 1 retrying" in table


def test_status_lists_a_real_worker(worker_process, user):
    worker = worker_process()
    status = json.loads(run("queue", "status", "--json"))
    [info] = status["workers"]
    assert info["pid"] == worker.pid and info["queues"] == ["ai-high", "ai-default", "ai-low"]
    assert info["state"] in ("idle", "started") and info["last_heartbeat"]
    assert "workers: 1" in run("queue", "status")


# --- pause / resume ---


def test_pause_stops_a_real_worker_taking_jobs_across_a_restart_and_resume_drains(worker_process, user, redis_conn):
    worker = worker_process()
    time.sleep(0.5)  # the worker is now blocked waiting for a job (BLPOP)

    out = run("queue", "pause", "--reason", "provider outage")
    assert "queue paused" in out and is_suspended(redis_conn)
    jobs = [submit(user) for _ in range(3)] + [submit(user, priority="high")]

    # the idle worker wakes for the first job, hands it back and waits: nothing runs
    wait_for(lambda: "paused; handed job" in worker.log(), timeout=10, what="the worker to hand a job back")
    time.sleep(2.5)
    assert statuses(*jobs) == [JobStatus.QUEUED] * 4
    assert JobAttempt.objects.count() == 0
    status = queue_control.queue_status()
    assert status["paused"] and status["reason"] == "provider outage" and status["paused_by"].endswith("(manage.py)")
    assert status["totals"]["waiting"] == 4 and status["totals"]["active"] == 0
    assert [w["state"] for w in status["workers"]] == ["suspended"]

    # a restarted worker (a deploy) stays paused too: the flag lives in Redis, not in the process
    worker.stop()
    restarted = worker_process()
    time.sleep(2.5)
    assert statuses(*jobs) == [JobStatus.QUEUED] * 4
    assert JobAttempt.objects.count() == 0
    assert queue_control.queue_status()["totals"]["waiting"] == 4

    out = run("queue", "resume")
    assert "queue resumed" in out and not is_suspended(redis_conn)
    wait_for(
        lambda: statuses(*jobs) == [JobStatus.SUCCEEDED] * 4,
        timeout=30,
        what=f"the jobs to drain after resume\n{restarted.log()}",
    )
    for job in jobs:
        assert list(JobAttempt.objects.filter(job_id=job.id).values_list("outcome", flat=True)) == ["succeeded"]
    assert queue_control.queue_status()["paused"] is False


def test_pause_lets_the_running_job_finish(worker_process, user, redis_conn):
    worker_process()
    running = submit(user, **sim(latency_ms=1500))
    wait_for(lambda: statuses(running) == [JobStatus.RUNNING], what="the job to start")
    run("queue", "pause")
    later = submit(user)
    wait_for(lambda: statuses(running) == [JobStatus.SUCCEEDED], timeout=15, what="the running job to finish")
    time.sleep(1.5)
    assert statuses(later) == [JobStatus.QUEUED]
    run("queue", "resume")
    wait_for(lambda: statuses(later) == [JobStatus.SUCCEEDED], timeout=15, what="the later job after resume")


def test_pause_twice_keeps_the_first_pause_and_resume_is_idempotent(redis_conn):
    first = queue_control.queue_pause(by="alice", reason="first")
    second = queue_control.queue_pause(by="bob", reason="second")
    assert second["paused_by"] == "alice" and second["reason"] == "first"
    assert second["paused_at"] == first["paused_at"]
    assert queue_control.queue_resume()["paused"] is False
    assert queue_control.queue_resume()["paused"] is False
    # RQ's own tools (`rq resume`) see and undo our pause: it is one flag
    run("queue", "pause")
    resume(redis_conn)
    assert queue_control.queue_status()["paused"] is False


# --- clear ---


def _prepare_mixed(user, run_worker):
    """One finished job, one dead job (with its dead letter), a delivery waiting for its retry, two waiting."""
    finished = submit(user)
    dead = submit(user, **sim(fail_attempts=5, error="auth"))
    delayed = submit(user, **sim(fail_attempts=1, error="rate_limit", retry_after=60))
    run_worker(until=lambda: statuses(finished, dead, delayed) == ["succeeded", "dead", "retrying"])
    waiting = [submit(user), submit(user, priority="low")]
    return finished, dead, delayed, waiting


def test_clear_waiting_cancels_those_jobs_only_and_postgres_and_redis_agree(user, run_worker, redis_conn):
    finished, dead, delayed, waiting = _prepare_mixed(user, run_worker)
    waiting_rq_ids = [AIJob.objects.get(id=j.id).rq_job_id for j in waiting]

    out = run("queue", "clear", "--status", "waiting", "--yes")

    assert "cleared waiting: 2 jobs canceled, 2 RQ jobs removed" in out
    assert statuses(*waiting) == [JobStatus.CANCELED] * 2
    assert all(AIJob.objects.get(id=j.id).rq_job_id == "" for j in waiting)
    assert all(q.count == 0 for q in all_queues())
    assert not any(Job.exists(rq_id, connection=redis_conn) for rq_id in waiting_rq_ids)
    # the delayed delivery, the finished and the dead job are untouched
    assert statuses(finished, dead, delayed) == ["succeeded", "dead", "retrying"]
    assert ScheduledJobRegistry(queue=get_queue("ai-default")).count == 1
    status = queue_control.queue_status()
    assert status["totals"]["waiting"] == 0 and status["jobs"]["queued"] == 0 and status["totals"]["delayed"] == 1
    # a worker afterwards finds nothing of theirs to run
    run_worker(until=lambda: True)  # one burst pass
    assert statuses(*waiting) == [JobStatus.CANCELED] * 2
    assert JobAttempt.objects.filter(job_id__in=[j.id for j in waiting]).count() == 0


def test_clear_delayed_cancels_the_retrying_job_and_its_scheduled_delivery(user, run_worker, redis_conn):
    finished, dead, delayed, waiting = _prepare_mixed(user, run_worker)
    rq_id = AIJob.objects.get(id=delayed.id).rq_job_id
    assert rq_id in ScheduledJobRegistry(queue=get_queue("ai-default")).get_job_ids()

    out = run("queue", "clear", "--status", "delayed", "--yes")

    assert "cleared delayed: 1 jobs canceled, 1 RQ jobs removed" in out
    row = AIJob.objects.get(id=delayed.id)
    assert row.status == JobStatus.CANCELED and row.rq_job_id == "" and row.next_attempt_at is None
    assert ScheduledJobRegistry(queue=get_queue("ai-default")).count == 0
    assert not Job.exists(rq_id, connection=redis_conn)
    assert statuses(*waiting) == [JobStatus.QUEUED] * 2 and get_queue("ai-default").count == 1
    status = queue_control.queue_status()
    assert status["jobs"] == {"queued": 2, "running": 0, "retrying": 0} and status["totals"]["delayed"] == 0


def test_clear_without_status_cancels_waiting_and_delayed(user, run_worker, redis_conn):
    finished, dead, delayed, waiting = _prepare_mixed(user, run_worker)
    run("queue", "clear", "--yes")
    assert statuses(delayed, *waiting) == [JobStatus.CANCELED] * 3
    assert statuses(finished, dead) == ["succeeded", "dead"]
    status = queue_control.queue_status()
    assert status["totals"]["waiting"] == status["totals"]["delayed"] == 0
    assert status["jobs"] == {"queued": 0, "running": 0, "retrying": 0}


def test_clear_failed_and_completed_empty_rq_registries_only(user, run_worker, redis_conn):
    # an RQ-level failure: a delivery whose job id is not a UUID raises inside the worker
    broken = get_queue("ai-default").enqueue("jobs.rq_jobs.run_job", "not-a-uuid", "not-a-uuid")
    finished, dead, delayed, waiting = _prepare_mixed(user, run_worker)
    assert FailedJobRegistry(queue=get_queue("ai-default")).count == 1
    completed_before = sum(FinishedJobRegistry(queue=q).count for q in all_queues())
    assert completed_before == 3  # finished, dead, and the delayed job's first delivery
    rows_before = db_snapshot()
    dead_letters = list(DeadLetter.objects.values_list("id", "status"))
    assert dead_letters

    out = run("queue", "clear", "--status", "failed")
    assert "cleared failed: 1 RQ jobs removed (job rows and dead letters stay)" in out
    assert FailedJobRegistry(queue=get_queue("ai-default")).count == 0
    assert not Job.exists(broken.id, connection=redis_conn)

    out = run("queue", "clear", "--status", "completed")
    assert f"cleared completed: {completed_before} RQ jobs removed" in out
    assert all(FinishedJobRegistry(queue=q).count == 0 for q in all_queues())

    assert db_snapshot() == rows_before
    assert list(DeadLetter.objects.values_list("id", "status")) == dead_letters
    assert AIJob.objects.get(id=finished.id).result is not None
    totals = queue_control.queue_status()["totals"]
    assert totals["failed"] == totals["completed"] == 0 and totals["waiting"] == 2 and totals["delayed"] == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (("clear", "--status", "running", "--yes"), "--status must be one of waiting, delayed, failed, completed"),
        (("clear", "--status", "waiting", "--status", "bogus", "--yes"), "not 'bogus'"),
        (("clear", "--status", "waiting"), "without --yes (stdin is not a terminal)"),
        (("clear",), "refusing to cancel every waiting and delayed job without --yes"),
    ],
)
def test_clear_bad_input_changes_nothing(user, run_worker, redis_conn, args, message):
    _prepare_mixed(user, run_worker)
    rows, keys = db_snapshot(), redis_snapshot(redis_conn)
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run("queue", *args)
    assert db_snapshot() == rows
    assert redis_snapshot(redis_conn) == keys


def test_clear_dry_run_counts_and_changes_nothing(user, run_worker, redis_conn):
    _prepare_mixed(user, run_worker)
    rows, keys = db_snapshot(), redis_snapshot(redis_conn)
    assert run("queue", "clear", "--dry-run").splitlines() == [
        "waiting: 2 jobs would be canceled",
        "delayed: 1 jobs would be canceled",
        "dry run: nothing changed",
    ]
    out = run("queue", "clear", "--status", "failed", "--status", "waiting", "--dry-run")
    assert out.splitlines()[:2] == ["failed: 0 RQ jobs would be removed", "waiting: 2 jobs would be canceled"]
    assert db_snapshot() == rows
    assert redis_snapshot(redis_conn) == keys
    with pytest.raises(CommandError, match="--status must be one of"):
        run("queue", "clear", "--status", "active", "--dry-run")


@pytest.mark.parametrize("args", [("bogus",), ("status", "--bogus"), ("pause", "extra")])
def test_unknown_subcommands_and_options_are_errors(args, redis_conn):
    with pytest.raises(CommandError):
        run("queue", *args)
    assert not is_suspended(redis_conn)


def test_clear_of_many_shows_progress(user, redis_conn):
    jobs = [submit(user) for _ in range(120)]
    out = run("queue", "clear", "--status", "waiting", "--yes", tty=True)
    assert "clearing waiting: 120/120 (100%)" in out
    assert "120 jobs canceled" in out
    assert AIJob.objects.filter(id__in=[j.id for j in jobs], status=JobStatus.CANCELED).count() == 120


def test_clear_of_many_shows_no_progress_when_not_on_a_terminal(user, redis_conn):
    for _ in range(60):
        submit(user)
    out = run("queue", "clear", "--status", "waiting", "--yes")
    assert out == "cleared waiting: 60 jobs canceled, 60 RQ jobs removed\n"


# --- intake ---


def test_intake_off_refuses_submissions_and_on_accepts_them_again(api, redis_conn):
    out = run("queue", "intake", "off", "--reason", "moving the database")
    assert "intake closed" in out
    assert queue_control.queue_status()["intake"]["reason"] == "moving the database"
    assert "INTAKE CLOSED" in run("queue", "status") and "moving the database" in run("queue", "status")
    refused = api.post("/api/ai/jobs", {"prompt": "p", "provider": "local"}, format="json")
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "intake_closed"

    assert "intake open" in run("queue", "intake", "on")
    assert queue_control.queue_status()["intake"]["open"] is True
    assert "INTAKE CLOSED" not in run("queue", "status")
    assert api.post("/api/ai/jobs", {"prompt": "p", "provider": "local"}, format="json").status_code == 201


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("queue", "intake"), "state"),
        (("queue", "intake", "shut"), "invalid choice"),
        (("queue", "intake", "on", "--reason", "x"), "--reason goes with `intake off`"),
        (("queue", "intake", "off", "--reason", "x" * 501), "reason must be at most 500 characters"),
    ],
)
def test_intake_bad_input_is_one_line_and_changes_nothing(args, message, redis_conn):
    with pytest.raises(CommandError, match=re.escape(message)):
        run(*args)
    assert queue_control.queue_status()["intake"]["open"] is True
