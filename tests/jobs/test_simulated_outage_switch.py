"""The simulated provider's outage switch lives in Redis; a Redis outage must not fail the calls it rides on.

A call that raised Redis's own ConnectionError from inside an attempt was classified UNKNOWN (not retryable), and
the Redis fault drills saw jobs die of it: dead, with every fault of theirs succeeded."""

from __future__ import annotations

import pytest

from jobs.providers import simulated
from jobs.providers.base import CallContext, ProviderError

MODEL = "sim-small"


def _call(job_id: str = "job-1") -> object:
    return simulated.SimulatedProvider().generate(
        prompt="A page for a bakery", model=MODEL, ctx=CallContext(job_id=job_id, attempt=1, timeout=5.0)
    )


@pytest.fixture(autouse=True)
def fresh_switch(redis_conn):
    simulated.outage_clear(model=MODEL)
    yield
    simulated.outage_clear(model=MODEL)


def test_with_redis_down_a_call_whose_switch_was_never_read_answers(redis_down, caplog):
    response = _call()

    assert response.usage.completion_tokens > 0 and response.text
    assert any("outage switch of sim-small unread" in r.getMessage() for r in caplog.records)


def test_with_redis_down_the_switch_reads_as_it_last_did(redis_down, monkeypatch):
    monkeypatch.setattr(simulated, "OUTAGE_RECHECK_SECONDS", 0.0)  # every call goes back to Redis
    redis_down.end()
    simulated.outage_set(model=MODEL, seconds=60)
    with pytest.raises(ProviderError) as on:
        _call("job-on")
    redis_down.begin()

    with pytest.raises(ProviderError) as still_on:
        _call("job-still-on")

    assert on.value.status == still_on.value.status == 503
    redis_down.end()
    simulated.outage_clear(model=MODEL)
    redis_down.begin()
    assert _call("job-off").text, "cleared while Redis was up: off"
