"""usage.price_sync.prices_sync: the genai-prices data's prices as dated ModelPrice rows. Idempotent; a
changed price adds one dated row and reprices nothing recorded; an operator's price always wins.

Price changes are made the way the package itself delivers them: a DataSnapshot installed as the data in
use (what a fetch with AI_PRICES_AUTO_UPDATE does), built from the bundled data with one model changed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.utils import timezone
from genai_prices import Usage as DataUsage
from genai_prices import calc_price, data_snapshot
from genai_prices import types as price_types

from usage import price_sync, services
from usage.models import ModelPrice, PriceSource, TokenUsage
from usage.pricing import COST_QUANTUM, price_in_force

from .conftest import record, utc

D = Decimal
OLD = price_types.ModelPrice(input_mtok=D("0.25"), output_mtok=D("2"), cache_read_mtok=D("0.025"))  # gpt-5-mini
NEW = price_types.ModelPrice(input_mtok=D("0.3"), output_mtok=D("2.4"), cache_read_mtok=D("0.03"))


@pytest.fixture
def install() -> Iterator:
    """install(model_id, prices): the bundled data with that OpenAI model's prices replaced, in use until
    the test ends."""

    def _install(model_id: str, prices: price_types.ModelPrice | list[price_types.ConditionalPrice]) -> None:
        providers = []
        for provider in data_snapshot.get_snapshot().providers:
            if provider.id == "openai":
                models = [
                    price_types.ModelInfo(**{**vars(m), "prices": prices}) if m.id == model_id else m
                    for m in provider.models
                ]
                provider = price_types.Provider(**{**vars(provider), "models": models})
            providers.append(provider)
        data_snapshot.set_custom_snapshot(data_snapshot.DataSnapshot(providers=providers, from_auto_update=False))

    yield _install
    data_snapshot.set_custom_snapshot(None)


def _changed_on(day: date) -> list[price_types.ConditionalPrice]:
    return [
        price_types.ConditionalPrice(prices=OLD),
        price_types.ConditionalPrice(constraint=price_types.StartDateConstraint(start_date=day), prices=NEW),
    ]


def _rows(model: str) -> list[tuple]:
    return list(
        ModelPrice.objects.filter(provider="openai", model=model)
        .order_by("effective_from")
        .values_list("effective_from", "input_per_million", "source")
    )


def test_a_second_sync_adds_nothing(prices):
    count = ModelPrice.objects.count()
    first = price_sync.prices_sync(fetch=False)
    second = price_sync.prices_sync(fetch=False)
    assert first.added == second.added == []
    assert first.unchanged == second.unchanged > 100
    assert ModelPrice.objects.count() == count


def test_from_an_empty_table_each_price_is_added_once_from_its_start(db):
    ModelPrice.objects.all().delete()
    dry = price_sync.prices_sync(fetch=False, dry_run=True)
    assert dry.dry_run and len(dry.added) > 100 and ModelPrice.objects.count() == 0

    done = price_sync.prices_sync(fetch=False)
    assert [(c.provider, c.model, c.effective_from) for c in done.added] == [
        (c.provider, c.model, c.effective_from) for c in dry.added
    ]
    assert ModelPrice.objects.count() == len(done.added)
    assert set(ModelPrice.objects.values_list("source", "data_version")) == {(PriceSource.PRICE_DATA, "0.2.3")}
    # a dated price change in the data is a dated row; one that starts later is scheduled
    assert _rows("o3") == [
        (utc(2024, 1, 1), D("10"), PriceSource.PRICE_DATA), (utc(2025, 6, 10), D("2"), PriceSource.PRICE_DATA)
    ]  # fmt: skip
    flash = ModelPrice.objects.filter(provider="google", model="gemini-3.6-flash").order_by("effective_from")
    assert [(p.effective_from, p.input_per_million) for p in flash] == [
        (utc(2024, 1, 1), D("0.75")), (utc(2027, 1, 1), D("1.5"))
    ]  # fmt: skip
    tiered = ModelPrice.objects.get(provider="anthropic", model="claude-sonnet-4-5")
    assert tiered.tiers == {
        "input_per_million": [[200_000, "6"]], "output_per_million": [[200_000, "22.5"]],
        "cached_input_per_million": [[200_000, "0.6"]], "cache_write_per_million": [[200_000, "7.5"]],
    }  # fmt: skip
    assert price_sync.prices_sync(fetch=False).added == []


def test_a_changed_price_adds_one_dated_row_and_recorded_costs_stay(prices, user, install):
    before = record(user, provider="openai", model="gpt-5-mini", prompt=10_000, cached=2_000, completion=1_000,
                    at=utc(2026, 2, 1))  # fmt: skip
    install("gpt-5-mini", _changed_on(date(2026, 6, 1)))

    result = price_sync.prices_sync(fetch=False)

    [change] = result.added
    assert (change.provider, change.model, change.effective_from) == ("openai", "gpt-5-mini", utc(2026, 6, 1))
    assert (change.previous.input_per_million, change.terms.input_per_million) == (D("0.25"), D("0.3"))
    assert _rows("gpt-5-mini") == [
        (utc(2024, 1, 1), D("0.25"), PriceSource.PRICE_DATA), (utc(2026, 6, 1), D("0.3"), PriceSource.PRICE_DATA)
    ]  # fmt: skip
    old_cost = before.cost
    before.refresh_from_db()
    assert before.cost == old_cost == D("0.004050000"), "8k x 0.25 + 2k x 0.025 + 1k x 2, per million"
    after = record(user, provider="openai", model="gpt-5-mini", prompt=10_000, cached=2_000, completion=1_000,
                   at=utc(2026, 7, 1))  # fmt: skip
    expected = calc_price(
        DataUsage(input_tokens=10_000, cache_read_tokens=2_000, output_tokens=1_000),
        model_ref="gpt-5-mini", provider_id="openai", genai_request_timestamp=utc(2026, 7, 1),
    ).total_price  # fmt: skip
    assert after.cost == expected.quantize(COST_QUANTUM) == D("0.004860000")
    assert price_sync.prices_sync(fetch=False).added == [], "and the next sync is a no-op again"


def test_a_change_dated_before_recorded_usage_takes_effect_at_the_sync(prices, user, install):
    recorded = record(user, provider="openai", model="gpt-5-mini", prompt=1_000, completion=100, at=utc(2026, 8, 1))
    install("gpt-5-mini", _changed_on(date(2026, 6, 1)))
    now = datetime(2026, 9, 1, 12, tzinfo=UTC)

    [change] = price_sync.prices_sync(fetch=False, now=now).added

    assert change.effective_from == now, "not 2026-06-01: the call on 2026-08-01 was costed at the old price"
    assert price_in_force(provider="openai", model="gpt-5-mini", at=utc(2026, 8, 1)).input_per_million == D("0.25")
    assert TokenUsage.objects.get(pk=recorded.pk).cost == recorded.cost


def test_an_operator_price_wins_and_the_sync_leaves_the_model_alone(prices, user, install):
    install("gpt-5-mini", _changed_on(date(2027, 6, 1)))
    scheduled = price_sync.prices_sync(fetch=False)
    assert [(c.model, c.effective_from) for c in scheduled.added] == [("gpt-5-mini", utc(2027, 6, 1))]

    operator = services.price_set(provider="openai", model="gpt-5-mini", input_per_million="0.2",
                                  output_per_million="1.6")  # fmt: skip
    assert operator.source == PriceSource.OPERATOR
    # the data's row scheduled for 2027 does not displace the operator's price when its day comes
    assert price_in_force(provider="openai", model="gpt-5-mini", at=utc(2027, 7, 1)) == operator
    install("gpt-5-mini", _changed_on(date(2027, 9, 1)))
    result = price_sync.prices_sync(fetch=False)
    assert result.added == [] and ("openai", "gpt-5-mini") in result.operator_priced
    row = record(user, provider="openai", model="gpt-5-mini", prompt=1_000_000, completion=0, at=utc(2027, 10, 1))
    assert row.cost == D("0.2")


def test_models_without_a_usable_price_stay_unpriced_and_are_reported(prices, install):
    install("gpt-5-mini", price_types.ModelPrice(input_mtok=D("1"), output_mtok=D("2"), requests_kcount=D("5")))
    count = ModelPrice.objects.count()

    result = price_sync.prices_sync(fetch=False)

    reasons = {(provider, model): why for provider, model, why in result.unpriced}
    assert reasons[("google", "gemma-4-31b-it")] == "the price data has no price for it"
    assert "prices units a call here does not report" in reasons[("openai", "gpt-5-mini")]
    assert result.added == [] and ModelPrice.objects.count() == count


def test_a_model_priced_for_the_first_time_after_unpriced_calls_is_priced_from_the_sync(prices, user):
    ModelPrice.objects.filter(provider="openai", model="gpt-5-nano").delete()
    unpriced = record(user, provider="openai", model="gpt-5-nano", prompt=100, completion=10, at=timezone.now())
    assert unpriced.cost is None

    [change] = price_sync.prices_sync(fetch=False).added

    assert change.model == "gpt-5-nano" and change.previous is None
    assert change.effective_from > unpriced.created_at, "the data has no start date: not before the call"
    assert TokenUsage.objects.get(pk=unpriced.pk).cost is None
