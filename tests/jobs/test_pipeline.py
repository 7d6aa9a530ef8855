"""The pipeline end to end: real Postgres, real Redis, a real forking RQ worker in burst mode."""

from __future__ import annotations

import pytest

from dlq.models import DeadLetter
from jobs import pipeline
from jobs.models import JobAttempt, JobStatus
from jobs.queues import get_queue
from jobs.schema import validate_page
from tests.factories import submit_job
from usage.models import TokenUsage

pytestmark = pytest.mark.django_db(transaction=True)


def test_submitted_job_runs_to_success_with_a_valid_page(user, run_worker):
    job = submit_job(user)
    assert get_queue("ai-default").job_ids == [str(job.id)], "enqueued on commit with RQ job id == job id"

    run_worker()

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert validate_page(job.result) == []
    assert job.attempts == 1 and job.finished_at is not None and job.error_type == ""
    [attempt] = JobAttempt.objects.filter(job=job)
    assert attempt.outcome == "succeeded" and attempt.validation_passed is True
    assert attempt.prompt_tokens > 0 and attempt.provider_request_id.startswith("local-")
    assert TokenUsage.objects.filter(job=job).count() == 1


def test_rate_limit_twice_then_success_honours_retry_after(user, run_worker, settings):
    settings.AI_BACKOFF_MAX_SECONDS = 0.01
    sim = {"fail_attempts": 2, "error": "rate_limit", "retry_after": 1, "prompt_tokens": 10, "completion_tokens": 20}
    job = submit_job(user, simulate=sim)

    run_worker()

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 3
    attempts = list(JobAttempt.objects.filter(job=job).order_by("number"))
    assert [a.outcome for a in attempts] == ["failed", "failed", "succeeded"]
    assert [a.error_type for a in attempts] == ["RATE_LIMIT", "RATE_LIMIT", ""]
    # Retry-After (1 s) wins over the 0.01 s backoff cap: each retry started at least 1 s after the failure
    for failed, nxt in zip(attempts, attempts[1:], strict=False):
        assert (nxt.started_at - failed.finished_at).total_seconds() >= 0.95
    # HTTP-style errors carry no usage; only the successful call is billed
    assert list(TokenUsage.objects.filter(job=job).values_list("attempt", flat=True)) == [3]


def test_non_retryable_auth_error_dies_after_one_attempt(user, run_worker):
    job = submit_job(user, simulate={"fail_attempts": 5, "error": "auth"})

    run_worker()

    job.refresh_from_db()
    assert job.status == JobStatus.DEAD and job.attempts == 1 and job.error_type == "AUTH_ERROR"
    [entry] = DeadLetter.objects.filter(job_uuid=job.id)
    assert entry.error_type == "AUTH_ERROR" and entry.retryable is False and entry.attempts == 1


def test_invalid_page_until_budget_runs_out_is_dead_with_validation_error(user, run_worker):
    sim = {"fail_attempts": 10, "error": "invalid_page", "prompt_tokens": 7, "completion_tokens": 3}
    job = submit_job(user, simulate=sim, max_attempts=3)

    run_worker()

    job.refresh_from_db()
    assert job.status == JobStatus.DEAD and job.attempts == 3 and job.error_type == "VALIDATION_ERROR"
    assert "not a valid page" in job.error_message
    assert list(JobAttempt.objects.filter(job=job).values_list("validation_passed", flat=True)) == [False] * 3
    # invalid answers are billed like a real model's
    assert TokenUsage.objects.filter(job=job).count() == 3
    [entry] = DeadLetter.objects.filter(job_uuid=job.id)
    assert entry.retryable is True and entry.attempts == 3
    assert [a["number"] for a in entry.payload["attempt_history"]] == [1, 2, 3]


def test_duplicate_delivery_runs_once(user, run_worker):
    job = submit_job(user)
    queue = get_queue("ai-default")
    # the same delivery arrives twice (e.g. a re-enqueue racing the original)
    queue.enqueue("jobs.rq_jobs.run_job", str(job.id), job.rq_job_id, job_id=f"{job.id}-dup")

    run_worker()

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1
    assert JobAttempt.objects.filter(job=job).count() == 1
    assert TokenUsage.objects.filter(job=job).count() == 1


def test_backoff_is_full_jitter_under_the_cap_and_retry_after_wins(settings):
    settings.AI_BACKOFF_BASE_SECONDS = 1
    settings.AI_BACKOFF_MAX_SECONDS = 8
    settings.AI_RETRY_AFTER_MAX_SECONDS = 600
    delays = [pipeline.backoff_seconds(attempt_in_budget=10) for _ in range(500)]
    assert all(0 <= d <= 8 for d in delays) and max(delays) > 4 and min(delays) < 4
    assert all(0 <= pipeline.backoff_seconds(attempt_in_budget=1) <= 1 for _ in range(100))
    assert pipeline.backoff_seconds(attempt_in_budget=1, retry_after=30) == 30
    assert pipeline.backoff_seconds(attempt_in_budget=1, retry_after=10_000) == 600
