"""The log lines an operator reads: one per attempt's end, one per retry scheduled, death and rate-limit wait
(jobs.accounting), in plain text or JSON (aipb.logs), and none of RQ's per-delivery chatter at INFO.

Jobs run through a real RQ worker in this process (AIPBSimpleWorker), so the lines are the records it logs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from datetime import timedelta

import pytest
from django.utils import timezone

from aipb.logs import RQ_DELIVERY_MESSAGES, JsonFormatter, PlainFormatter, RequestIdFilter, log_event
from dlq.models import DeadLetter
from jobs import transitions
from jobs.models import AIJob, JobStatus
from jobs.queues import all_queues
from jobs.recovery import jobs_reconcile
from jobs.worker import AIPBSimpleWorker
from tests.factories import submit_job
from tests.ops.conftest import BASE_DIR, child_env
from usage.models import TokenUsage

pytestmark = pytest.mark.django_db(transaction=True)
SIM = {"prompt_tokens": 100, "completion_tokens": 50}


def events(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


def test_every_attempt_retry_death_and_rate_limit_wait_is_one_line(user, run_worker, settings, caplog):
    settings.AI_RATE_LIMIT_PER_SECOND = 2  # three jobs at once: some deliveries wait for a token
    settings.AI_RATE_LIMIT_BURST = 1
    settings.AI_RATE_LIMIT_RETRY_SECONDS = 0
    retried = submit_job(user, simulate={**SIM, "fail_attempts": 1, "error": "invalid_json"})
    dead = submit_job(user, simulate={**SIM, "fail_attempts": 9, "error": "auth"})
    ok = submit_job(user, simulate=SIM)
    with caplog.at_level(logging.INFO, logger="jobs.accounting"):
        run_worker(worker_class=AIPBSimpleWorker)
    assert AIJob.objects.get(id=dead.id).status == JobStatus.DEAD

    ended = events(caplog, "attempt_ended")
    assert len(ended) == 4  # ok once, retried twice, dead once
    first = next(r for r in ended if r.job_id == retried.id and r.attempt == 1)
    usage = TokenUsage.objects.get(job_id=retried.id, attempt=1)  # invalid JSON is an answer: billed
    assert (first.provider, first.model, first.outcome, first.error_type) == (
        "simulated",
        "sim-small",
        "failed",
        "VALIDATION_ERROR",
    )
    assert (first.prompt_tokens, first.completion_tokens, first.cost_usd, first.status) == (
        100,
        50,
        usage.cost,
        JobStatus.RETRYING,
    )
    assert isinstance(first.latency_ms, int) and first.levelno == logging.INFO
    message = first.getMessage()
    assert message.startswith(f"attempt_ended job_id={retried.id} attempt=1 provider=simulated model=sim-small")
    assert "outcome=failed error_type=VALIDATION_ERROR" in message and "status=retrying" in message
    assert [r.status for r in ended if r.job_id == ok.id] == [JobStatus.SUCCEEDED]

    (retry,) = events(caplog, "retry_scheduled")
    assert retry.job_id == retried.id and retry.attempt == 1 and 0 <= retry.delay_seconds <= 0.05
    (death,) = events(caplog, "job_dead")
    entry = DeadLetter.objects.get(job_uuid=dead.id)
    assert (death.job_id, death.error_type, death.dead_letter_id) == (dead.id, "AUTH_ERROR", entry.id)
    assert death.levelno == logging.WARNING and f"dead_letter_id={entry.id}" in death.getMessage()
    waits = events(caplog, "rate_limit_wait")
    assert waits and all(w.provider == "simulated" and w.delay_seconds > 0 for w in waits)
    assert {w.job_id for w in waits} <= {retried.id, dead.id, ok.id}


def test_lease_recovery_logs_the_abandoned_attempt_and_its_retry(user, redis_conn, caplog):
    job = submit_job(user, simulate=SIM)
    row = AIJob.objects.get(id=job.id)
    transitions.job_claim(job_id=str(job.id), rq_job_id=row.rq_job_id)
    AIJob.objects.filter(id=job.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    with caplog.at_level(logging.INFO, logger="jobs.accounting"):
        report = jobs_reconcile()
    assert report.recovered == [str(job.id)]
    (ended,) = events(caplog, "attempt_ended")
    assert (ended.job_id, ended.attempt, ended.outcome, ended.error_type) == (job.id, 1, "abandoned", "TIMEOUT")
    (retry,) = events(caplog, "retry_scheduled")
    assert retry.job_id == job.id and retry.delay_seconds == 0


def test_json_lines_carry_the_fields_and_plain_lines_stay_one_line():
    logger = logging.getLogger("tests.logs")
    record = logger.makeRecord(
        logger.name,
        logging.WARNING,
        __file__,
        1,
        "%s %s",
        ("job_dead", "job_id=1"),
        None,
        extra={"event": "job_dead", "job_id": "abc", "error_message": 'said "no"\nsecond line', "cost_usd": None},
    )
    RequestIdFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["event"] == "job_dead" and line["job_id"] == "abc" and line["level"] == "WARNING"
    assert line["logger"] == "tests.logs" and line["time"].endswith("Z") and "cost_usd" not in line  # empty: left out
    assert "request_id" not in line  # no request around it

    captured = []
    handler = logging.Handler()
    handler.emit = lambda r: captured.append(PlainFormatter().format(r))
    logger.addHandler(handler)
    logger.propagate = False
    try:
        log_event(logger, "job_dead", level=logging.WARNING, job_id="abc", error_message='said "no"\nsecond line')
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    (text,) = captured
    assert "\n" not in text and text.endswith('job_dead job_id=abc error_message="said \\"no\\"\\nsecond line"')


def test_rq_per_delivery_lines_are_debug(user, redis_conn, caplog):
    submit_job(user, simulate=SIM)
    worker = AIPBSimpleWorker(all_queues(), connection=redis_conn)
    with caplog.at_level(logging.INFO):
        worker.work(burst=True, logging_level="INFO")
    rq_lines = [r for r in caplog.records if r.name == "rq.worker"]
    assert rq_lines, "RQ's own start and stop lines still show"
    assert not [r.getMessage() for r in rq_lines if r.msg in RQ_DELIVERY_MESSAGES]
    assert events(caplog, "attempt_ended")  # what happened to the job is said by ours

    caplog.clear()
    submit_job(user, simulate=SIM)
    with caplog.at_level(logging.DEBUG):
        AIPBSimpleWorker(all_queues(), connection=redis_conn).work(burst=True, logging_level="DEBUG")
    demoted = [r for r in caplog.records if r.name == "rq.worker" and r.msg in RQ_DELIVERY_MESSAGES]
    assert demoted and {r.levelname for r in demoted} == {"DEBUG"}
    assert any("Job OK" in r.getMessage() for r in demoted)


def test_aipb_log_format_json_makes_every_line_json_and_a_bad_value_is_refused():
    code = "import logging; logging.getLogger('jobs.accounting').warning('hello %s', 'there', extra={'job_id': 'x'})"
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=BASE_DIR,
        env=child_env(AIPB_LOG_FORMAT="json"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (line,) = [x for x in lines if x["logger"] == "jobs.accounting"]
    assert line["message"] == "hello there" and line["job_id"] == "x" and line["level"] == "WARNING"
    assert all(line.startswith("{") for line in done.stderr.splitlines() if line.strip()), done.stderr

    refused = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=BASE_DIR,
        env=child_env(AIPB_LOG_FORMAT="xml"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0 and "AIPB_LOG_FORMAT must be plain or json" in refused.stderr
