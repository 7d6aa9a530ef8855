"""Each real provider end to end: job_submit → a real forking RQ worker → the provider's real SDK
→ its loopback fake server, with real Postgres and Redis. The fake runs in this process; the
worker's work-horse (a fork) reaches it over loopback like any other HTTP API.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from genai_prices import Usage as PriceDataUsage
from genai_prices import calc_price

from dlq.models import DeadLetter
from jobs import submission
from jobs.models import AIJob, JobAttempt, JobStatus
from tests.fakes import SAMPLE_PAGE
from usage import price_sync
from usage.models import TokenUsage

pytestmark = pytest.mark.django_db(transaction=True)


def submit(user, provider: str, model: str, prompt: str) -> AIJob:
    job, created = submission.job_submit(owner=user, prompt=prompt, provider=provider, model=model)
    assert created
    return job


def attempts(job: AIJob) -> list[JobAttempt]:
    return list(JobAttempt.objects.filter(job=job).order_by("number"))


def usage_rows(job: AIJob) -> list[tuple]:
    rows = TokenUsage.objects.filter(job=job).order_by("attempt")
    return list(rows.values_list("attempt", "prompt_tokens", "completion_tokens", "cached_tokens"))


def test_openai_job_succeeds_with_usage_and_request_id(user, run_worker, openai_server):
    job = submit(user, "openai", "gpt-4o-mini", "A landing page for a bakery")

    run_worker()

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, (job.error_type, job.error_message)
    assert job.result == SAMPLE_PAGE
    [attempt] = attempts(job)
    assert attempt.provider_request_id == openai_server.last.reply_headers["x-request-id"]
    assert (attempt.prompt_tokens, attempt.completion_tokens, attempt.cached_tokens) == (1200, 350, 1024)
    assert usage_rows(job) == [(1, 1200, 350, 1024)]
    assert openai_server.last.body["model"] == "gpt-4o-mini"


def test_a_gpt_5_mini_job_is_billed_what_the_price_data_charges(user, run_worker, openai_server):
    price_sync.prices_sync(fetch=False)  # what `make run` does on start (this test's database starts empty)
    # a reasoning model: 2,000 of its 2,350 output tokens were thinking, billed as output
    openai_server.enqueue(
        {"name": "ok", "usage": {"completion_tokens": 2350, "total_tokens": 3550,
                                 "completion_tokens_details": {"reasoning_tokens": 2000, "audio_tokens": 0}}}
    )  # fmt: skip
    job = submit(user, "openai", "gpt-5-mini", "A landing page for a bakery")

    run_worker()

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, (job.error_type, job.error_message)
    assert openai_server.last.body["model"] == "gpt-5-mini"
    [row] = TokenUsage.objects.filter(job=job)
    assert (row.model, row.prompt_tokens, row.cached_tokens, row.completion_tokens) == ("gpt-5-mini", 1200, 1024, 2350)
    charged = calc_price(
        PriceDataUsage(input_tokens=1200, cache_read_tokens=1024, output_tokens=2350, output_reasoning_tokens=2000),
        model_ref="gpt-5-mini", provider_id="openai", genai_request_timestamp=row.created_at,
    ).total_price  # fmt: skip
    # 176 x 0.25 + 1,024 x 0.025 + 2,350 x 2 USD per million
    assert row.cost == charged.quantize(Decimal("0.000000001")) == Decimal("0.004769600")


def test_openai_rate_limit_then_success_honours_retry_after(user, run_worker, openai_server, settings):
    settings.AI_BACKOFF_MAX_SECONDS = 0.01
    openai_server.enqueue({"name": "429", "retry_after": 2}, "ok")
    job = submit(user, "openai", "gpt-4o-mini", "A landing page for a bakery")

    run_worker()

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    first, second = attempts(job)
    assert (first.error_type, second.outcome) == ("RATE_LIMIT", "succeeded")
    # Retry-After (2 s) beat the 0.01 s backoff. RQ schedules in whole seconds, rounding down, so
    # the wait can come out up to a second short.
    assert (second.started_at - first.finished_at).total_seconds() >= 1.0
    assert usage_rows(job) == [(2, 1200, 350, 1024)]  # the 429 was not billed


def test_openai_exhausted_quota_is_dead_lettered_after_one_attempt(user, run_worker, openai_server):
    job = submit(user, "openai", "gpt-4o-mini", "A bakery [[fake:quota]]")

    run_worker()

    job.refresh_from_db()
    assert (job.status, job.attempts, job.error_type) == (JobStatus.DEAD, 1, "AUTH_ERROR")
    [entry] = DeadLetter.objects.filter(job_uuid=job.id)
    assert entry.retryable is False
    assert len(openai_server.requests) == 1


def test_anthropic_overloaded_then_success(user, run_worker, anthropic_server):
    job = submit(user, "anthropic", "claude-3-haiku", "A bakery [[fake:529,ok#e2e-anthropic]]")

    run_worker()

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, (job.error_type, job.error_message)
    assert job.result == SAMPLE_PAGE
    first, second = attempts(job)
    assert (first.error_type, first.prompt_tokens) == ("SERVICE_UNAVAILABLE", 0)
    assert second.provider_request_id == anthropic_server.last.reply_headers["request-id"]
    assert usage_rows(job) == [(2, 1200, 350, 1024)]
    assert {r.body["model"] for r in anthropic_server.requests} == {"claude-3-haiku-20240307"}


def test_gemini_invalid_page_is_billed_then_re_asked(user, run_worker, gemini_server):
    job = submit(user, "google", "gemini-2.0-flash", "A bakery [[fake:invalid_page,ok#e2e-gemini]]")

    run_worker()

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, (job.error_type, job.error_message)
    assert job.result == SAMPLE_PAGE
    first, second = attempts(job)
    assert (first.error_type, first.validation_passed) == ("VALIDATION_ERROR", False)
    assert second.validation_passed is True
    # Both answers were billed: the invalid page too.
    assert usage_rows(job) == [(1, 1200, 350, 1024), (2, 1200, 350, 1024)]
    assert second.provider_request_id == json.loads(gemini_server.last.reply_body)["responseId"]


def test_gemini_safety_block_is_not_retried(user, run_worker, gemini_server):
    job = submit(user, "google", "gemini-2.0-flash", "A bakery [[fake:blocked]]")

    run_worker()

    job.refresh_from_db()
    assert (job.status, job.attempts, job.error_type) == (JobStatus.DEAD, 1, "CONTENT_POLICY")
    assert usage_rows(job) == [(1, 1200, 350, 1024)]  # withheld, but billed
