"""Usage is durable before state (usage.recording): one row per provider call, recorded in its own
transaction; spooled to Redis when Postgres cannot take it, and replayed into Postgres exactly once."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs.providers.base import Usage
from tests.aipb.test_database_outage import Outage
from tests.factories import submit_job
from usage import recording
from usage.models import ModelPrice, MonthlySpend, PriceSource, TokenUsage
from usage.pricing import PriceSeen, cost_of
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


def _price_row(provider: str, model: str) -> ModelPrice:
    return ModelPrice.objects.filter(provider=provider, model=model).order_by("-effective_from").first()


def test_a_price_changed_by_another_process_bills_the_next_call(job, redis_conn):
    """The cost is computed with the price this process last saw, and the INSERT checks it is still the price in
    force: a price another process changed (an UPDATE that no signal here sees) bills the very next call, and a
    price that did not change costs no statement of its own."""
    price = _price_row("simulated", "sim-small")
    usage_record_durable(job=job, attempt=1, usage=USAGE, at=timezone.now())  # this process has seen the price

    with CaptureQueriesContext(connection) as unchanged:
        second = usage_record_durable(job=job, attempt=2, usage=USAGE, at=timezone.now())
    assert len(unchanged) == 1, [q["sql"] for q in unchanged]
    assert second.cost == cost_of(usage=USAGE, price=price)

    ModelPrice.objects.filter(pk=price.pk).update(input_per_million=price.input_per_million * 3)
    third = usage_record_durable(job=job, attempt=3, usage=USAGE, at=timezone.now())
    assert third.cost == cost_of(usage=USAGE, price=ModelPrice.objects.get(pk=price.pk)) != second.cost
    assert TokenUsage.objects.get(job=job, attempt=3).cost == third.cost

    operator = ModelPrice.objects.create(
        provider="simulated",
        model="sim-small",
        input_per_million=Decimal("100"),
        output_per_million=Decimal("200"),
        effective_from=timezone.now() - timedelta(seconds=1),
        source=PriceSource.OPERATOR,
    )
    fourth = usage_record_durable(job=job, attempt=4, usage=USAGE, at=timezone.now())
    assert fourth.cost == cost_of(usage=USAGE, price=operator)

    ModelPrice.objects.filter(provider="simulated", model="sim-small").delete()
    unpriced = usage_record_durable(job=job, attempt=5, usage=USAGE, at=timezone.now())
    assert unpriced.cost is None and TokenUsage.objects.get(job=job, attempt=5).cost is None
    attempts = TokenUsage.objects.filter(job=job).order_by("attempt").values_list("attempt", flat=True)
    assert list(attempts) == [1, 2, 3, 4, 5]
    spent = MonthlySpend.objects.get(user_id=job.owner_id, group_id=None).spent_usd
    assert spent == sum(TokenUsage.objects.filter(job=job).exclude(cost=None).values_list("cost", flat=True))


def test_a_price_seen_that_is_no_longer_in_force_writes_nothing_and_is_read_again(job, redis_conn):
    """A stale price in this process's memory (here one no row has): the guarded INSERT writes nothing, the price
    is read again and the row written with it, billed once."""
    key = ("simulated", "sim-small")
    recording._prices[key] = PriceSeen(None, "a version no row has")
    with CaptureQueriesContext(connection) as statements:
        recorded = usage_record_durable(job=job, attempt=1, usage=USAGE, at=timezone.now())
    assert len(statements) == 3, [q["sql"] for q in statements]  # the INSERT refused, the read, the INSERT
    price = _price_row(*key)
    assert recorded.cost == cost_of(usage=USAGE, price=price) and recorded.cost is not None
    assert recording._prices[key].price == price
    assert TokenUsage.objects.get(job=job, attempt=1).cost == recorded.cost
    assert MonthlySpend.objects.get(user_id=job.owner_id, group_id=None).spent_usd == recorded.cost
