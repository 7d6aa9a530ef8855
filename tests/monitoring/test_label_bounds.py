"""Bounded labels: a metric's `model` label is a catalogue name or `other`, whatever names users send.

An OpenAI-compatible OPENAI_BASE_URL accepts any model name; each one used to become a label value, i.e. new
series in every metric family (the issue measured 2,300 series for 100 names). The API and the rows keep the
name the user sent.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from jobs.models import AIJob, JobStatus
from jobs.providers import reset_providers
from jobs.worker import AIPBSimpleWorker
from monitoring import metrics
from tests.factories import submit_job
from tests.fakes import DEFAULT_API_KEY, FakeOpenAIServer
from usage.models import TokenUsage

JOBS = 100
HANDFUL = 12  # label sets one more model value adds across every family (histogram buckets not counted)


@pytest.fixture
def openai_compatible(settings) -> Iterator[FakeOpenAIServer]:
    """A loopback OpenAI-compatible server as OPENAI_BASE_URL: every model name is accepted."""
    with FakeOpenAIServer() as server:
        settings.OPENAI_API_KEY = DEFAULT_API_KEY
        settings.OPENAI_BASE_URL = server.base_url
        settings.AI_PROVIDER_TIMEOUT_SECONDS = 5.0
        reset_providers()
        yield server
    reset_providers()


def scrape() -> str:
    return Client().get("/metrics").content.decode()


def jobs_total(**labels) -> float:
    for family in text_string_to_metric_families(scrape()):
        for sample in family.samples:
            if sample.name == "ai_jobs_total" and sample.labels == labels:
                return sample.value
    return 0.0


def label_sets() -> set[tuple[str, tuple]]:
    """Every series of the ai_ families as (family, labels); a histogram's buckets count as one."""
    text = scrape()
    out = set()
    for family in text_string_to_metric_families(text):
        if family.name.startswith("ai_"):
            for sample in family.samples:
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
                out.add((family.name.removesuffix("_created"), labels))  # a counter's _created is its series
    return out


def test_a_hundred_made_up_model_names_add_only_a_handful_of_series(user, run_worker, openai_compatible):
    before = label_sets()
    succeeded_before = jobs_total(provider="openai", model="other", status="succeeded")
    names = [f"made-up-model-{i:03d}" for i in range(JOBS)]
    for name in names:
        submit_job(user, provider="openai", model=name)

    run_worker(worker_class=AIPBSimpleWorker, timeout=120)

    assert AIJob.objects.filter(status=JobStatus.SUCCEEDED).count() == JOBS
    after = label_sets()
    added = after - before
    assert len(added) <= HANDFUL, sorted(added)
    models = {dict(labels).get("model") for _, labels in after}
    assert not models & set(names)
    assert jobs_total(provider="openai", model="other", status="succeeded") == succeeded_before + JOBS
    # the API and the rows keep the names sent
    assert set(AIJob.objects.values_list("model", flat=True)) == set(names)
    assert set(TokenUsage.objects.values_list("model", flat=True)) == set(names)
    assert sorted(request.body["model"] for request in openai_compatible.requests) == names


@pytest.mark.parametrize(
    ("provider", "model", "label"),
    [
        ("simulated", "sim-small", "sim-small"),  # a declared model
        ("openai", "gpt-4o-mini", "gpt-4o-mini"),  # a price-data model
        ("anthropic", "claude-sonnet-4", "claude-sonnet-4-0"),  # an alias counts under its canonical name
        ("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("openai", "llama3.1:8b", "other"),  # what an OpenAI-compatible server accepts
        ("openai", "GPT-4O-MINI", "other"),  # provider ids are lower case; the API would not know this one
        ("local", "x" * 200, "other"),
    ],
)
def test_the_model_label_is_a_catalogue_name_or_other(provider, model, label):
    assert metrics.model_label(provider, model) == label


def test_each_helper_bounds_the_model_label(db, redis_conn):
    before = label_sets()
    metrics.job_finished(provider="openai", model="unknown-a", status="succeeded")
    metrics.attempt_finished(provider="openai", model="unknown-b", outcome="failed", seconds=1, error_type="TIMEOUT")
    metrics.output_validated(provider="openai", model="unknown-c", passed=True)
    metrics.retry_scheduled(provider="openai", model="unknown-d")
    metrics.usage_recorded(provider="openai", model="unknown-e", prompt=1, completion=1, cached=0, cost=None)
    after = label_sets()
    assert {dict(labels)["model"] for _, labels in after - before if "model" in dict(labels)} <= {"other"}
    assert not any(str(dict(labels).get("model")).startswith("unknown-") for _, labels in after)
