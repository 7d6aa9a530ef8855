"""An OpenAI outage with the real SDKs against the loopback fakes: jobs with an Anthropic fallback succeed there,
billed at Anthropic's price; the circuit bounds what reaches OpenAI; jobs without a fallback wait and succeed once
OpenAI is back (half-open probe, close)."""

from __future__ import annotations

import pytest
from django.utils import timezone

from jobs import submission
from jobs.catalogue import canonical_model
from jobs.models import AIJob, JobAttempt, JobStatus
from jobs.providers.base import Usage
from jobs.routing import circuits
from jobs.routing.circuits import Target
from tests.conftest import all_final
from usage import price_sync
from usage.models import TokenUsage
from usage.pricing import cost_of, price_in_force

pytestmark = pytest.mark.django_db(transaction=True)

OPENAI = Target("openai", "gpt-4o-mini")
HAIKU = {"provider": "anthropic", "model": "claude-3-5-haiku"}
CHAT = "/v1/chat/completions"


@pytest.fixture(autouse=True)
def outage_settings(settings, redis_conn):
    settings.AI_CIRCUIT_FAILURE_THRESHOLD = 3
    settings.AI_CIRCUIT_WINDOW_SECONDS = 60
    settings.AI_RATE_LIMIT_RETRY_SECONDS = 0.05
    return settings


def submit(user, **kwargs) -> AIJob:
    job, created = submission.job_submit(
        owner=user, prompt="A landing page for a bakery", provider="openai", model="gpt-4o-mini", **kwargs
    )
    assert created
    return job


def openai_calls(server) -> int:
    return sum(1 for r in server.requests if r.path == CHAT)


def test_an_openai_outage_is_served_by_the_anthropic_fallback_at_anthropics_price(
    user, run_worker, openai_server, anthropic_server, settings
):
    settings.AI_CIRCUIT_COOLDOWN_SECONDS = 120  # the outage outlasts the test: no probe
    price_sync.prices_sync(fetch=False)
    openai_server.default_scenario = "503"
    jobs = [submit(user, fallbacks=[HAIKU]) for _ in range(8)]

    run_worker(timeout=120)

    assert [AIJob.objects.get(id=j.id).status for j in jobs] == [JobStatus.SUCCEEDED] * 8
    assert openai_calls(openai_server) == 3, "OpenAI saw the failures that opened its circuit, not one per job"
    assert circuits.health([OPENAI])[OPENAI].circuit == "open"
    served = JobAttempt.objects.filter(job__in=jobs, outcome="succeeded")
    assert set(served.values_list("provider", "model")) == {("anthropic", "claude-3-5-haiku")}
    rows = TokenUsage.objects.filter(job__in=jobs)
    billed_as = ("anthropic", canonical_model("anthropic", "claude-3-5-haiku"))  # the name its price is kept under
    assert rows.count() == 8 and set(rows.values_list("provider", "model")) == {billed_as}
    price = price_in_force(provider="anthropic", model="claude-3-5-haiku", at=timezone.now())
    for row in rows:
        usage = Usage(
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            cached_tokens=row.cached_tokens,
            cache_write_tokens=row.cache_write_tokens,
        )
        assert row.cost == cost_of(usage=usage, price=price) and row.cost > 0
    job = AIJob.objects.get(id=jobs[0].id)
    assert (job.served_provider, job.served_model) == ("anthropic", "claude-3-5-haiku")


def test_without_a_fallback_jobs_wait_out_the_outage_then_a_probe_closes_the_circuit(
    user, run_worker, openai_server, settings
):
    settings.AI_CIRCUIT_COOLDOWN_SECONDS = 5
    openai_server.default_scenario = "503"
    jobs = [submit(user, fallbacks=[], max_attempts=2) for _ in range(5)]

    run_worker(until=lambda: circuits.health([OPENAI])[OPENAI].circuit == "open", timeout=60)
    assert openai_calls(openai_server) == 3
    openai_server.default_scenario = "ok"  # OpenAI is back; the circuit is still open

    run_worker(until=all_final, timeout=120)

    rows = [AIJob.objects.get(id=j.id) for j in jobs]
    assert [r.status for r in rows] == [JobStatus.SUCCEEDED] * 5
    assert openai_calls(openai_server) == 3 + 5  # the failures, then one success per job (the first the probe)
    assert all(r.attempts <= 2 for r in rows)
    assert circuits.health([OPENAI])[OPENAI].circuit == "closed"
