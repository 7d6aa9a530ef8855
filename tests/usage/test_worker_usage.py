"""Real jobs through the real RQ worker, then the report over the API: every billed call counted and priced."""

from __future__ import annotations

import pytest

from dlq.models import DeadLetter
from jobs import actions, submission
from jobs.models import AIJob, JobStatus
from jobs.providers import reset_providers
from tests.fakes import DEFAULT_API_KEY, FakeAnthropicServer
from usage.models import TokenUsage

from .conftest import assert_breakdowns_add_up, csv_totals

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("prices")]


def submit(owner, **kwargs) -> AIJob:
    job, created = submission.job_submit(owner=owner, prompt="A landing page for a bakery in Lisbon", **kwargs)
    assert created
    return job


def sim(**simulate) -> dict:
    return {"provider": "simulated", "options": {"simulate": simulate}}


def test_failed_and_retried_attempts_are_billed_and_reported(user, other_user, staff_api, run_worker):
    # 2 invalid-JSON answers (billed), then a valid page: 3 calls x (1M in x 1 + 250k out x 2) = 3 x 1.50
    retried = submit(
        user, model="sim-small", max_attempts=3,
        **sim(error="invalid_json", fail_attempts=2, prompt_tokens=1_000_000, completion_tokens=250_000),
    )  # fmt: skip
    # out of budget on invalid JSON: dead, both calls billed: 2 x (10 x 10 + 20 x 5) / 1M
    dead = submit(
        other_user, model="sim-large", max_attempts=2,
        **sim(error="invalid_json", fail_attempts=9, prompt_tokens=10, completion_tokens=5),
    )  # fmt: skip
    # a 503 carries no usage, the retry that succeeds does: 100k out x 20 = 2.00
    flaky = submit(
        other_user, model="sim-large",
        **sim(error="unavailable", fail_attempts=1, prompt_tokens=0, completion_tokens=100_000),
    )  # fmt: skip
    # an auth error dies at once and bills nothing
    denied = submit(user, model="sim-small", **sim(error="auth", fail_attempts=5))

    run_worker()

    statuses = {job.pk: job.status for job in AIJob.objects.all()}
    assert statuses == {
        retried.pk: JobStatus.SUCCEEDED, dead.pk: JobStatus.DEAD, flaky.pk: JobStatus.SUCCEEDED,
        denied.pk: JobStatus.DEAD,
    }  # fmt: skip
    assert DeadLetter.objects.count() == 2
    assert sorted(TokenUsage.objects.filter(job=retried).values_list("attempt", flat=True)) == [1, 2, 3]
    assert sorted(TokenUsage.objects.filter(job=flaky).values_list("attempt", flat=True)) == [2]

    response = staff_api.get("/api/ai/usage/last-n-days", {"days": 2})  # robust across midnight
    assert response.status_code == 200, response.content
    body = response.json()
    assert_breakdowns_add_up(body)
    assert body["requests"] == 3 + 2 + 1
    assert body["prompt_tokens"] == 3_000_000 + 20 and body["completion_tokens"] == 750_000 + 10 + 100_000
    assert body["total_estimated_cost"] == "6.500400"  # 4.50 + 0.0004 + 2.00
    assert body["unpriced_requests"] == 0
    assert body["by_model"]["sim-small"]["estimated_cost"] == "4.500000"
    assert body["by_model"]["sim-large"] == {
        "requests": 3, "prompt_tokens": 20, "completion_tokens": 100_010, "cached_tokens": 0,
        "total_tokens": 100_030, "estimated_cost": "2.000400", "unpriced_requests": 0,
    }  # fmt: skip
    assert [u["user"] for u in body["top_users"]] == ["alice", "bob"]

    csv_response = staff_api.get("/api/ai/usage/last-n-days", {"days": 2, "format": "csv"})
    text = b"".join(csv_response.streaming_content).decode()
    assert csv_totals(text) == {key: body[key] for key in ("by_date", "by_provider", "by_model", "by_user")}

    # deleting the job keeps its billed usage
    actions.job_delete(job_id=retried.pk, owner=None)
    assert TokenUsage.objects.filter(job__isnull=True).count() == 3
    assert staff_api.get("/api/ai/usage/last-n-days", {"days": 2}).json()["total_estimated_cost"] == "6.500400"


@pytest.fixture
def anthropic_server(settings):
    with FakeAnthropicServer(hang_seconds=1.0) as server:
        settings.ANTHROPIC_API_KEY = DEFAULT_API_KEY
        settings.ANTHROPIC_BASE_URL = server.base_url
        settings.AI_PROVIDER_TIMEOUT_SECONDS = 5.0
        reset_providers()
        yield server
    reset_providers()


def test_anthropic_cache_reads_and_writes_through_the_sdk_are_normalized_and_priced(
    user, api, anthropic_server, run_worker
):
    # Anthropic reports input_tokens without the cache: 200k fresh + 1M read + 100k written
    anthropic_server.enqueue(
        {
            "name": "ok",
            "usage": {
                "input_tokens": 200_000, "cache_read_input_tokens": 1_000_000,
                "cache_creation_input_tokens": 100_000, "output_tokens": 50_000,
            },
        }
    )  # fmt: skip
    job = submit(user, provider="anthropic", model="claude-3-5-sonnet-20241022")

    run_worker()

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED, job.error_message
    [row] = TokenUsage.objects.filter(job=job)
    assert (row.model, row.prompt_tokens, row.cached_tokens, row.cache_write_tokens) == (
        "claude-3-5-sonnet", 1_300_000, 1_000_000, 100_000,
    )  # fmt: skip
    body = api.get("/api/ai/usage/last-n-days", {"days": 2}).json()
    # 200k x 3 + 1M x 0.30 + 100k x 3.75 + 50k x 15 = 0.60 + 0.30 + 0.375 + 0.75
    assert body["total_estimated_cost"] == "2.025000"
    assert (body["prompt_tokens"], body["cached_tokens"], body["total_tokens"]) == (1_300_000, 1_000_000, 1_350_000)
