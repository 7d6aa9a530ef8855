"""Usage is durable before state (usage.recording): one row per provider call, recorded in its own
transaction; spooled to Redis when Postgres cannot take it, and replayed into Postgres exactly once."""

from __future__ import annotations

import json

import pytest
from django.utils import timezone

from jobs.providers.base import Usage
from tests.aipb.test_database_outage import Outage
from tests.factories import submit_job
from usage.models import TokenUsage
from usage.recording import SPOOL_KEY, usage_record_durable, usage_spool_replay

USAGE = Usage(prompt_tokens=120, completion_tokens=40, cached_tokens=20)


@pytest.fixture
def job(user, redis_conn):
    return submit_job(user, simulate={})


def test_recording_a_call_twice_keeps_one_row(job, redis_conn):
    at = timezone.now()
    first = usage_record_durable(job=job, attempt=1, usage=USAGE, at=at)
    again = usage_record_durable(job=job, attempt=1, usage=USAGE, at=at)

    assert not first.spooled and not again.spooled
    assert first.cost == again.cost
    assert TokenUsage.objects.filter(job=job, attempt=1).count() == 1
    assert redis_conn.llen(SPOOL_KEY) == 0


def test_usage_is_spooled_while_postgres_is_down_and_replayed_once(transactional_db, user, redis_conn):
    job = submit_job(user, simulate={})
    outage = Outage()
    outage()
    try:
        recorded = usage_record_durable(job=job, attempt=1, usage=USAGE, at=timezone.now())
    finally:
        outage.end()

    assert recorded.spooled and recorded.cost is None
    assert redis_conn.llen(SPOOL_KEY) == 1
    assert json.loads(redis_conn.lindex(SPOOL_KEY, 0))["usage"]["prompt_tokens"] == 120
    assert TokenUsage.objects.count() == 0

    assert usage_spool_replay() == 1
    row = TokenUsage.objects.get(job=job, attempt=1)
    assert (row.prompt_tokens, row.completion_tokens, row.cached_tokens) == (120, 40, 20)
    assert redis_conn.llen(SPOOL_KEY) == 0
    assert usage_spool_replay() == 0  # a second reconcile finds nothing
    assert TokenUsage.objects.count() == 1


def test_a_record_replayed_twice_is_billed_once(job, redis_conn):
    """A crash between the replay's commit and its LREM leaves the record in the spool: replaying it again
    must add nothing."""
    at = timezone.now()
    usage_record_durable(job=job, attempt=2, usage=USAGE, at=at)
    record = {
        "job_id": str(job.id),
        "owner_id": job.owner_id,
        "attempt": 2,
        "provider": job.provider,
        "model": job.model,
        "usage": {"prompt_tokens": 120, "completion_tokens": 40, "cached_tokens": 20, "cache_write_tokens": 0},
        "at": at.isoformat(),
    }
    redis_conn.rpush(SPOOL_KEY, json.dumps(record))

    assert usage_spool_replay() == 1
    assert TokenUsage.objects.filter(job=job, attempt=2).count() == 1
