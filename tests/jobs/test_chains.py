"""The default chains of AI_FALLBACKS and the order routing puts a job's chain in."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from jobs.models import AIJob
from jobs.routing import chains
from jobs.routing.circuits import Target


def test_ai_fallbacks_parses_model_and_provider_sources():
    parsed = chains.default_chains(
        "simulated:sim-small=simulated:sim-large, local:local-page ; simulated=local:local-page"
    )
    assert parsed[("simulated", "sim-small")] == (Target("simulated", "sim-large"), Target("local", "local-page"))
    assert parsed[("simulated", None)] == (Target("local", "local-page"),)


@pytest.mark.parametrize(
    "raw,message",
    [
        ("simulated:sim-small", "not SOURCE=TARGET"),
        ("simulated:sim-small=", "not SOURCE=TARGET"),
        ("nope=local:local-page", "unknown provider"),
        ("simulated:sim-huge=local:local-page", "unknown model"),
        ("simulated=local", "not provider:model"),
        ("simulated=local:nope", "unknown model"),
    ],
)
def test_a_malformed_ai_fallbacks_names_what_is_wrong(raw, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        chains.default_chains(raw)


def job(**fields) -> AIJob:
    return AIJob(provider="simulated", model="sim-small", **fields)


def test_a_jobs_own_fallbacks_replace_the_default_chain(settings):
    settings.AI_FALLBACKS = "simulated=local:local-page"
    assert chains.chain_of(job()) == [Target("simulated", "sim-small"), Target("local", "local-page")]
    assert chains.chain_of(job(fallbacks=[])) == [Target("simulated", "sim-small")]
    own = job(fallbacks=[{"provider": "simulated", "model": "sim-large"}])
    assert chains.chain_of(own) == [Target("simulated", "sim-small"), Target("simulated", "sim-large")]


def test_after_a_provider_side_failure_the_next_attempt_starts_at_the_next_target():
    chain = [Target("simulated", "sim-small"), Target("simulated", "sim-large"), Target("local", "local-page")]
    failed_on_large = job(error_type="SERVICE_UNAVAILABLE", served_provider="simulated", served_model="sim-large")
    assert chains._after_failure(chain, failed_on_large) == [chain[2], chain[0], chain[1]]
    invalid_on_large = job(error_type="VALIDATION_ERROR", served_provider="simulated", served_model="sim-large")
    assert chains._after_failure(chain, invalid_on_large) == chain  # the model answered: nothing to move away from


def test_a_malformed_ai_fallbacks_leaves_a_job_on_its_own_target(settings, caplog):
    settings.AI_FALLBACKS = "simulated=nowhere"
    assert chains.chain_of(job()) == [Target("simulated", "sim-small")]
    assert "AI_FALLBACKS" in caplog.text
