"""usage.pricing: the cost recorded for a call equals what the genai-prices package computes for the same
usage, to the stored precision (DECIMAL(18, 9)), for prices synced from its data: flat, cached, cache
writes, tiers by prompt size, reasoning tokens, dated price changes, aliases."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.utils import timezone
from genai_prices import Usage as DataUsage
from genai_prices import calc_price, data_snapshot
from genai_prices import types as price_types

from jobs.providers.base import Usage
from usage.models import ModelPrice, PriceSource
from usage.pricing import (
    COST_QUANTUM,
    Unrepresentable,
    cost_of,
    price_data_info,
    price_data_timeline,
    price_in_force,
)

from .conftest import record

NOW = object()  # the call happens now, after the sync: the data's current price is in force

# provider, model as submitted, call time, prompt (all input), cached reads, cache writes, completion, of
# which reasoning. Each row: what the case shows.
CASES = [
    ("openai", "gpt-5-mini", NOW, 12_000, 0, 0, 800, 0),  # today's default small model
    ("openai", "gpt-5-mini-2025-08-07", NOW, 12_000, 10_240, 0, 4_000, 3_200),  # alias; cached; reasoning
    ("openai", "gpt-5", NOW, 150_000, 100_000, 0, 20_000, 15_000),
    ("openai", "gpt-5-nano", NOW, 1, 0, 0, 1, 0),  # sub-micro-dollar: rounded at the 9th place
    ("openai", "gpt-4o-mini", NOW, 1_000_000, 400_000, 0, 100_000, 0),
    ("openai", "gpt-4.1", NOW, 900_000, 0, 0, 30_000, 0),
    ("openai", "gpt-5.4", NOW, 272_000, 0, 0, 5_000, 0),  # exactly at the tier's start: base rates
    ("openai", "gpt-5.4", NOW, 272_001, 100_000, 0, 5_000, 1_000),  # one token over: the tier for the whole call
    ("openai", "o3", datetime(2025, 5, 1, tzinfo=UTC), 50_000, 0, 0, 10_000, 8_000),  # before the 2025-06-10 cut
    ("openai", "o3-2025-04-16", datetime(2025, 7, 1, tzinfo=UTC), 50_000, 0, 0, 10_000, 8_000),  # after it
    ("openai", "o4-mini", NOW, 30_000, 1_024, 0, 2_000, 1_500),
    ("anthropic", "claude-sonnet-4-5", NOW, 150_000, 100_000, 20_000, 5_000, 0),  # cache reads and writes
    ("anthropic", "claude-sonnet-4-5-20250929", NOW, 260_000, 200_000, 50_000, 20_000, 0),  # tiered, cached
    ("anthropic", "claude-haiku-4-5", NOW, 8_000, 0, 8_000, 1_000, 0),  # all of the prompt written to cache
    ("anthropic", "claude-3-haiku-20240307", NOW, 1_200_000, 1_000_000, 100_000, 40_000, 0),
    ("anthropic", "claude-opus-4-1", NOW, 5_000, 0, 0, 3_000, 2_000),  # extended thinking billed as output
    ("anthropic", "claude-sonnet-4", NOW, 10_000, 5_000, 0, 1_000, 0),  # alias of claude-sonnet-4-0
    ("google", "gemini-2.5-flash", NOW, 20_000, 0, 0, 6_000, 5_000),  # thinking tokens billed as output
    ("google", "gemini-2.5-pro", NOW, 199_999, 50_000, 0, 8_000, 0),
    ("google", "gemini-2.5-pro", NOW, 250_000, 50_000, 0, 8_000, 4_000),  # over 200k: the long-context rates
    ("google", "gemini-2.0-flash-001", NOW, 40_000, 32_000, 0, 900, 0),  # alias; cached
    ("google", "gemini-1.5-flash", NOW, 130_000, 0, 0, 2_000, 0),  # over its 128k tier
    ("google", "gemini-3-flash-preview", NOW, 10_000, 2_000, 0, 1_000, 0),  # a price changed on 2026-01-05
]


@pytest.mark.parametrize("provider, model, at, prompt, cached, written, completion, reasoning", CASES)
def test_recorded_cost_equals_the_packages_price(prices, user, provider, model, at, prompt, cached, written,
                                                 completion, reasoning):  # fmt: skip
    at = timezone.now() if at is NOW else at
    row = record(
        user, provider=provider, model=model, prompt=prompt, cached=cached, cache_write=written,
        completion=completion, at=at,
    )  # fmt: skip
    expected = calc_price(
        DataUsage(
            input_tokens=prompt,
            cache_read_tokens=cached,
            cache_write_tokens=written,
            output_tokens=completion,
            output_reasoning_tokens=reasoning,
        ),
        model_ref=model,
        provider_id=provider,
        genai_request_timestamp=at,
    ).total_price
    assert row.cost is not None, "priced from the synced data"
    assert row.cost == expected.quantize(COST_QUANTUM), (row.model, row.cost, expected)
    assert price_in_force(provider=provider, model=model, at=at).source in (PriceSource.PRICE_DATA, PriceSource.SEED)


def test_the_sample_covers_every_kind_of_call_dependent_price(prices):
    assert len(CASES) >= 20 and {c[0] for c in CASES} == {"openai", "anthropic", "google"}
    tiered = [c for c in CASES if price_in_force(provider=c[0], model=c[1], at=timezone.now()).tiers]
    assert len(tiered) >= 6
    assert any(c[4] and c[5] for c in CASES), "cache reads and writes in one call"
    assert any(c[7] for c in CASES), "reasoning tokens"


def test_every_synced_price_reproduces_the_package_on_either_side_of_its_tiers(prices):
    """Beyond the sample: each price the sync stored, against the package's own price for that date."""
    snapshot = data_snapshot.get_snapshot()
    checked = 0
    for price in ModelPrice.objects.filter(source=PriceSource.PRICE_DATA):
        data_provider = {"google": "google", "openai": "openai", "anthropic": "anthropic"}[price.provider]
        _, data_model = snapshot.find_provider_model(price.model, None, data_provider, None)
        starts = [start for steps in price.tiers.values() for start, _ in steps]
        for prompt in (10_000, *(start + 1 for start in starts)):
            usage = Usage(prompt_tokens=prompt, completion_tokens=777, cached_tokens=prompt // 3,
                          cache_write_tokens=prompt // 7)  # fmt: skip
            theirs = data_model.calc_price(
                DataUsage(input_tokens=prompt, output_tokens=777, cache_read_tokens=prompt // 3,
                          cache_write_tokens=prompt // 7),
                snapshot.find_provider(None, data_provider, None),
                genai_request_timestamp=max(price.effective_from, datetime(2024, 1, 1, tzinfo=UTC)),
            ).total_price  # fmt: skip
            assert cost_of(usage=usage, price=price) == theirs.quantize(COST_QUANTUM), (price, prompt)
            checked += 1
    assert checked > 120


def test_a_price_the_rows_cannot_reproduce_is_refused():
    per_request = price_types.ModelInfo(
        id="x", match=price_types.ClauseEquals(equals="x"),
        prices=price_types.ModelPrice(input_mtok=Decimal("1"), output_mtok=Decimal("2"), requests_kcount=Decimal("5")),
    )  # fmt: skip
    too_fine = price_types.ModelInfo(
        id="y", match=price_types.ClauseEquals(equals="y"),
        prices=price_types.ModelPrice(input_mtok=Decimal("0.0000001"), output_mtok=Decimal("2")),
    )  # fmt: skip
    for model, message in ((per_request, "prices units a call here does not report"), (too_fine, "DECIMAL")):
        with pytest.raises(Unrepresentable, match=message):
            price_data_timeline(model)


def test_price_data_info_names_the_data_and_the_last_sync(prices):
    info = price_data_info()
    assert info["package"] == "genai-prices" and info["version"] == "0.2.3" and info["source"] == "bundled"
    assert info["newest_price_change"] <= timezone.now().date().isoformat()
    assert info["last_synced_version"] == "0.2.3" and info["last_synced_at"]
