"""Routing through a real forking RQ worker, real Postgres and Redis: circuits, fallbacks, waiting out an outage,
the routing policies. The simulated provider's outage switch takes one model down for every process."""

from __future__ import annotations

import math
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from dlq.models import DeadLetter
from jobs.errors import Classified, ErrorType
from jobs.models import AIJob, JobAttempt, JobStatus
from jobs.providers import simulated
from jobs.routing import chains, circuits
from jobs.routing.circuits import Target
from jobs.serializers import job_output
from tests.conftest import all_final
from tests.factories import submit_job
from usage.models import ModelPrice, PriceSource, TokenUsage

pytestmark = pytest.mark.django_db(transaction=True)

SMALL = Target("simulated", "sim-small")
LARGE = Target("simulated", "sim-large")
DOWN = Classified(type=ErrorType.SERVICE_UNAVAILABLE, retryable=True, message="down")
TO_LARGE = [{"provider": "simulated", "model": "sim-large"}]


@pytest.fixture(autouse=True)
def routing_settings(settings, redis_conn):
    settings.AI_CIRCUIT_FAILURE_THRESHOLD = 3
    settings.AI_CIRCUIT_WINDOW_SECONDS = 60
    settings.AI_CIRCUIT_COOLDOWN_SECONDS = 1.0
    settings.AI_RATE_LIMIT_RETRY_SECONDS = 0.05
    chains.prices_forget()
    yield settings
    chains.prices_forget()


def attempts_of(job: AIJob) -> list[JobAttempt]:
    return list(JobAttempt.objects.filter(job=job).order_by("number"))


def test_a_job_whose_target_is_down_succeeds_on_its_fallback_billed_there(user, run_worker):
    simulated.outage_set(model="sim-small", seconds=60)
    job = submit_job(user, simulate={}, fallbacks=TO_LARGE)

    run_worker()

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 2
    first, second = attempts_of(job)
    assert (first.provider, first.model, first.error_type) == ("simulated", "sim-small", "SERVICE_UNAVAILABLE")
    assert (second.provider, second.model, second.outcome) == ("simulated", "sim-large", "succeeded")
    assert list(TokenUsage.objects.filter(job=job).values_list("attempt", "model")) == [(2, "sim-large")]
    shown = job_output(job)
    assert shown["served_by"] == {"provider": "simulated", "model": "sim-large"}
    assert [(a["provider"], a["model"]) for a in shown["attempt_history"]] == [
        ("simulated", "sim-small"),
        ("simulated", "sim-large"),
    ]


def test_the_circuit_opens_after_the_threshold_and_later_jobs_go_straight_to_the_fallback(user, run_worker, settings):
    settings.AI_CIRCUIT_COOLDOWN_SECONDS = 120  # no half-open probe during the test
    simulated.outage_set(model="sim-small", seconds=60)
    jobs = [submit_job(user, simulate={}, fallbacks=TO_LARGE) for _ in range(8)]

    run_worker()

    assert all(AIJob.objects.get(id=j.id).status == JobStatus.SUCCEEDED for j in jobs)
    on_small = JobAttempt.objects.filter(job__in=jobs, model="sim-small")
    assert on_small.count() == 3, "the down target was called until its circuit opened, not once per job"
    assert JobAttempt.objects.filter(job__in=jobs, model="sim-large", outcome="succeeded").count() == 8
    assert circuits.health([SMALL])[SMALL].circuit == "open"
    assert not DeadLetter.objects.exists()


def test_without_a_fallback_jobs_wait_for_the_circuit_instead_of_spending_their_budget(user, run_worker, settings):
    settings.AI_CIRCUIT_COOLDOWN_SECONDS = 5  # longer than a pass of the worker: no probe before the outage ends
    simulated.outage_set(model="sim-small", seconds=60)
    jobs = [submit_job(user, simulate={}, fallbacks=[], max_attempts=2) for _ in range(6)]

    # until the circuit opens: 3 attempts failed, the jobs' deliveries now wait for it
    run_worker(until=lambda: circuits.health([SMALL])[SMALL].circuit == "open")
    assert JobAttempt.objects.filter(job__in=jobs).count() == 3
    simulated.outage_clear(model="sim-small")  # the provider recovers while the circuit is open

    run_worker(until=all_final, timeout=60)

    rows = [AIJob.objects.get(id=j.id) for j in jobs]
    assert [r.status for r in rows] == [JobStatus.SUCCEEDED] * 6
    assert JobAttempt.objects.filter(job__in=jobs, outcome="failed").count() == 3
    # each job made at most one failed attempt and its success: waiting spent nothing of its budget of 2
    assert all(r.attempts <= 2 for r in rows)
    assert sum(r.deliveries for r in rows) > sum(r.attempts for r in rows), "some deliveries waited without an attempt"
    assert circuits.health([SMALL])[SMALL].circuit == "closed"  # the half-open probe succeeded and closed it


def test_a_failed_half_open_probe_keeps_jobs_waiting(user, run_worker, settings):
    settings.AI_CIRCUIT_COOLDOWN_SECONDS = 0.5
    simulated.outage_set(model="sim-small", seconds=60)
    jobs = [submit_job(user, simulate={}, fallbacks=[], max_attempts=10) for _ in range(3)]
    started = time.monotonic()
    run_worker(until=lambda: JobAttempt.objects.filter(job__in=jobs).count() >= 5, timeout=60)
    down_for = time.monotonic() - started
    simulated.outage_clear(model="sim-small")
    run_worker(until=all_final, timeout=60)
    failed = JobAttempt.objects.filter(job__in=jobs, outcome="failed").count()
    # three to open it, then one probe per cool-down while it was down; never one call per waiting delivery
    assert 5 <= failed <= 3 + math.ceil(down_for / 0.5) + 1, (failed, down_for)
    rows = [AIJob.objects.get(id=j.id) for j in jobs]
    assert sum(r.deliveries for r in rows) > sum(r.attempts for r in rows), "deliveries waited for the circuit"
    assert all(AIJob.objects.get(id=j.id).status == JobStatus.SUCCEEDED for j in jobs)


def test_the_default_chain_of_ai_fallbacks_applies_to_a_job_naming_none(user, run_worker, settings):
    settings.AI_FALLBACKS = "simulated:sim-small=simulated:sim-large"
    simulated.outage_set(model="sim-small", seconds=60)
    job = submit_job(user, simulate={})
    assert job.fallbacks is None

    run_worker()

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert (job.served_provider, job.served_model) == ("simulated", "sim-large")


def test_a_chain_exhausted_follows_the_retry_and_dead_rules(user, run_worker):
    simulated.outage_set(model="sim-small", seconds=60)
    simulated.outage_set(model="sim-large", seconds=60)
    job = submit_job(user, simulate={}, fallbacks=TO_LARGE, max_attempts=2)

    run_worker()

    job.refresh_from_db()
    assert job.status == JobStatus.DEAD and job.error_type == "SERVICE_UNAVAILABLE"
    assert [(a.model, a.outcome) for a in attempts_of(job)] == [("sim-small", "failed"), ("sim-large", "failed")]


def _price(model: str, per_million: str) -> None:
    ModelPrice.objects.create(
        provider="simulated",
        model=model,
        input_per_million=Decimal(per_million),
        output_per_million=Decimal(per_million),
        effective_from=timezone.now() - timedelta(days=1),
        source=PriceSource.OPERATOR,
    )


def test_cheapest_picks_the_target_with_the_lower_price_for_a_typical_page(user, run_worker):
    _price("sim-small", "10")
    _price("sim-large", "1")
    job = submit_job(user, simulate={}, fallbacks=TO_LARGE, routing_policy="cheapest")
    ordered = submit_job(user, simulate={}, fallbacks=TO_LARGE)

    run_worker()

    assert [a.model for a in attempts_of(job)] == ["sim-large"]
    assert [a.model for a in attempts_of(ordered)] == ["sim-small"]
    assert TokenUsage.objects.get(job=job).cost == TokenUsage.objects.get(job=ordered).cost / 10


def test_fastest_picks_the_target_with_the_lower_recent_p50(user, run_worker):
    for ms in (900, 1000, 1100):
        circuits.report(SMALL, error=None, latency_ms=ms)
    for ms in (100, 150, 5000):
        circuits.report(LARGE, error=None, latency_ms=ms)
    job = submit_job(user, simulate={}, fallbacks=TO_LARGE, routing_policy="fastest")

    run_worker()

    assert [a.model for a in attempts_of(job)] == ["sim-large"]


def test_routing_never_picks_an_open_circuit_or_a_target_without_a_key(user, run_worker, settings):
    settings.OPENAI_API_KEY = "sk-test"
    job = submit_job(
        user,
        simulate={},
        fallbacks=[{"provider": "openai", "model": "gpt-4o-mini"}, *TO_LARGE],
        routing_policy="cheapest",
    )
    settings.OPENAI_API_KEY = ""  # the key is gone by the time the job runs
    for _ in range(3):
        circuits.report(SMALL, error=DOWN, latency_ms=5)

    run_worker()

    assert [(a.provider, a.model) for a in attempts_of(job)] == [("simulated", "sim-large")]
