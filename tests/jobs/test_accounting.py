"""jobs.accounting, the one place that counts how attempts and jobs end: the counters equal the rows, whoever
ended the attempt — the worker, lease recovery, or both, when a worker comes back after reconcile took its
job back and writes its own result for an attempt already counted as abandoned.

The counters are read from this process's registry (PROMETHEUS_MULTIPROC_DIR is unset in tests), so the
attempts run in this process: the pipeline in a thread stands for the worker that comes back late."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connections
from django.db.models import Sum
from django.utils import timezone
from prometheus_client import REGISTRY

from dlq.models import DeadLetter
from jobs import pipeline, transitions
from jobs.errors import ErrorType
from jobs.models import AIJob, AttemptOutcome, JobAttempt, JobStatus
from jobs.recovery import jobs_reconcile
from tests.factories import submit_job
from usage.models import TokenUsage

pytestmark = pytest.mark.django_db(transaction=True)

SIMPLE = {"provider": "simulated", "model": "sim-small"}
SLOW_MS = 2500  # the late worker's provider call: its 1 s lease expires and reconcile runs well before it ends


def counters() -> dict[str, float]:
    """Every counter an attempt's or a job's end moves, for sim-small."""

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {**SIMPLE, **labels}) or 0.0

    out = {f"attempts {o}": sample("ai_jobs_attempts_total", outcome=o) for o in AttemptOutcome.values}
    out |= {f"errors {t}": sample("ai_jobs_errors_total", error_type=t) for t in ErrorType.values}
    out |= {f"jobs {s}": sample("ai_jobs_total", status=s) for s in ("succeeded", "dead")}
    out |= {f"tokens {t}": sample("ai_llm_tokens_total", type=t) for t in ("prompt", "completion")}
    out |= {f"validation {r}": sample("ai_jobs_validation_total", result=r) for r in ("pass", "fail")}
    out["retries"] = sample("ai_jobs_retry_total")
    out["durations"] = sample("ai_jobs_processing_duration_seconds_count")
    return out


def books() -> dict[str, float]:
    """The same figures from the rows (the test's database holds only this test's jobs)."""
    attempts = JobAttempt.objects.all()
    usage = TokenUsage.objects.aggregate(prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
    out = {f"attempts {o}": attempts.filter(outcome=o).count() for o in AttemptOutcome.values}
    out |= {f"errors {t}": attempts.filter(error_type=t).count() for t in ErrorType.values}
    out["jobs succeeded"] = AIJob.objects.filter(status=JobStatus.SUCCEEDED).count()
    out["jobs dead"] = DeadLetter.objects.count()  # one entry per death
    out |= {f"tokens {t}": usage[t] or 0 for t in ("prompt", "completion")}
    out["validation pass"] = attempts.filter(validation_passed=True).count()
    out["validation fail"] = attempts.filter(validation_passed=False).count()
    out["durations"] = attempts.count()
    return out


def moved(before: dict[str, float]) -> dict[str, float]:
    after = counters()
    return {key: after[key] - before[key] for key in after if key != "retries"}


def in_a_thread(fn, *args) -> tuple[threading.Thread, list]:
    result: list = []

    def run():
        try:
            result.append(fn(*args))
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def wait_until(predicate, *, timeout: float = 15.0, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def lease_taken_back_while_running(job: AIJob) -> tuple[str, dict]:
    """Run attempt 1 in a worker thread; once its lease has expired mid-call, reconcile takes the job back.
    Returns what the worker said when it finally came back, and what reconcile reported."""
    worker, said = in_a_thread(pipeline.run_attempt, str(job.id), job.rq_job_id)

    def lease_over() -> bool:
        row = AIJob.objects.get(id=job.id)
        return row.status == JobStatus.RUNNING and timezone.now() > row.lease_expires_at

    wait_until(lease_over, what="the attempt to start and outlive its lease")
    report = jobs_reconcile().as_dict()
    assert worker.is_alive(), "the provider call must still be running when reconcile takes the job back"
    worker.join(timeout=30)
    return said[0], report


def late_worker(user, settings, *, max_attempts: int, late_answer: str) -> tuple[AIJob, dict, dict]:
    """Attempt 1 outlives its lease; reconcile retries the job (or kills it, with no attempts left); then the
    worker comes back with `late_answer`. Returns the job, the counters before, and reconcile's report."""
    settings.AI_LEASE_SECONDS = 1
    simulate = {"latency_ms": SLOW_MS, "prompt_tokens": 100, "completion_tokens": 50}
    if late_answer == "an error":
        simulate |= {"fail_attempts": 1, "error": "unavailable"}
    job = submit_job(user, simulate=simulate, max_attempts=max_attempts)
    before = counters()
    said, report = lease_taken_back_while_running(job)
    assert said == "abandoned: attempt 1 lost its lease"
    job.refresh_from_db()
    return job, before, report


LATE = pytest.mark.parametrize(
    ("max_attempts", "late_answer"),
    [(2, "a page"), (1, "a page"), (2, "an error")],
    ids=["retried-then-the-late-page", "dead-then-the-late-page", "retried-then-the-late-error"],
)


@LATE
def test_a_late_worker_after_lease_recovery_is_counted_once(user, redis_conn, settings, max_attempts, late_answer):
    job, before, report = late_worker(user, settings, max_attempts=max_attempts, late_answer=late_answer)

    if max_attempts == 1:
        assert report["dead"] == [str(job.id)] and job.status == JobStatus.DEAD and job.result is None
    else:
        assert report["recovered"] == [str(job.id)] and job.status == JobStatus.RETRYING
    assert job.error_type == ErrorType.TIMEOUT, "the late answer never overwrites the job"
    [attempt] = JobAttempt.objects.filter(job=job)
    assert attempt.outcome == AttemptOutcome.ABANDONED
    # counted once, by recovery: an abandoned attempt, its TIMEOUT, its retry or the job's death
    delta = moved(before)
    assert delta["attempts abandoned"] == delta["durations"] == 1 and delta["errors TIMEOUT"] == 1
    assert counters()["retries"] - before["retries"] == (1 if max_attempts == 2 else 0)
    assert delta["jobs dead"] == (1 if max_attempts == 1 else 0) and delta["jobs succeeded"] == 0
    assert delta["attempts succeeded"] == delta["attempts failed"] == 0
    assert delta["errors SERVICE_UNAVAILABLE"] == 0, "the late worker's own error is not counted a second time"
    # what the late worker brings is counted as its rows record it: its usage, its output's validation
    errors = [key for key in delta if key.startswith("errors ")]
    assert {k: v for k, v in delta.items() if k not in errors} == {k: v for k, v in books().items() if k not in errors}

    if max_attempts == 2:  # the next delivery runs it to success: still one success
        assert pipeline.run_attempt(str(job.id), f"{job.id}_2") == "succeeded"
        after = moved(before)
        assert after["jobs succeeded"] == after["attempts succeeded"] == books()["jobs succeeded"] == 1
        assert after["attempts abandoned"] == books()["attempts abandoned"] == 1


@pytest.mark.parametrize("late_answer", ["a page", "an error"])
def test_the_error_counted_for_an_abandoned_attempt_is_the_one_on_its_row(user, redis_conn, settings, late_answer):
    """ai_jobs_errors_total counted the abandoned attempt's TIMEOUT when reconcile recorded it; the row must
    still say TIMEOUT after the worker comes back late, or the counter and the rows disagree for good."""
    job, before, _ = late_worker(user, settings, max_attempts=2, late_answer=late_answer)

    attempt = JobAttempt.objects.get(job=job, number=1)
    assert (attempt.outcome, attempt.error_type) == (AttemptOutcome.ABANDONED, ErrorType.TIMEOUT)
    assert moved(before) == books()


@pytest.mark.parametrize("max_attempts", [1, 2])
def test_a_worker_that_never_comes_back_is_counted_once(user, redis_conn, settings, max_attempts):
    settings.AI_LEASE_SECONDS = 0  # the lease is over as soon as it is taken
    job = submit_job(user, simulate={}, max_attempts=max_attempts)
    transitions.job_claim(job_id=str(job.id), rq_job_id=job.rq_job_id)  # a worker claimed it and died
    before = counters()

    first = jobs_reconcile()
    second = jobs_reconcile()

    assert len(first.recovered + first.dead) == 1 and second.recovered + second.dead == []
    delta = moved(before)
    assert delta["attempts abandoned"] == delta["errors TIMEOUT"] == delta["durations"] == 1
    assert counters()["retries"] - before["retries"] == (1 if max_attempts == 2 else 0)
    assert delta["jobs dead"] == (1 if max_attempts == 1 else 0)
    assert delta == books()


def test_a_worker_finishing_before_reconcile_is_counted_as_any_attempt(user, redis_conn, settings):
    """A lease that ran out while the attempt was being recorded: the worker's conditional update still wins
    (reconcile had not taken the job back), and reconcile then finds nothing."""
    settings.AI_LEASE_SECONDS = 0
    job = submit_job(user, simulate={"prompt_tokens": 100, "completion_tokens": 50})
    before = counters()

    assert pipeline.run_attempt(str(job.id), job.rq_job_id) == "succeeded"
    assert jobs_reconcile().as_dict() == {"requeued": [], "recovered": [], "dead": [], "dry_run": False}

    delta = moved(before)
    assert delta["attempts succeeded"] == delta["jobs succeeded"] == 1 and delta["attempts abandoned"] == 0
    assert delta == books()
