"""Costs fixed at record time from the price in force, the seeded prices, and price changes keeping history."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from aipb.exceptions import InvalidInput
from jobs import catalogue
from usage import services
from usage.models import ModelPrice, PriceSource, TokenUsage
from usage.pricing import price_in_force
from usage.reports import report_filters, usage_report

from .conftest import price_data_migration, record, seed_migration, utc

D = Decimal

# The issue's table, written out independently of the migration: USD per 1M tokens.
ISSUE_PRICES = {
    ("openai", "gpt-4"): ("30", "60", None, None),
    ("openai", "gpt-4-turbo"): ("10", "30", None, None),
    ("openai", "gpt-3.5-turbo"): ("0.50", "1.50", None, None),
    ("openai", "gpt-4o"): ("2.50", "10", "1.25", None),
    ("openai", "gpt-4o-mini"): ("0.15", "0.60", "0.075", None),
    ("anthropic", "claude-3-opus"): ("15", "75", "1.50", "18.75"),
    ("anthropic", "claude-3-sonnet"): ("3", "15", "0.30", "3.75"),
    ("anthropic", "claude-3-5-sonnet"): ("3", "15", "0.30", "3.75"),
    ("anthropic", "claude-3-haiku"): ("0.25", "1.25", "0.03", "0.30"),
    ("anthropic", "claude-sonnet-4"): ("3", "15", "0.30", "3.75"),
    ("google", "gemini-pro"): ("0.50", "1.50", None, None),
    ("google", "gemini-1.5-pro"): ("3.50", "10.50", None, None),
    ("google", "gemini-1.5-flash"): ("0.075", "0.30", None, None),
    ("google", "gemini-2.0-flash"): ("0.10", "0.40", "0.025", None),
    ("simulated", "sim-small"): ("1", "2", None, None),
    ("simulated", "sim-large"): ("10", "20", None, None),
}


def _opt(value):
    return None if value is None else D(value)


def test_the_migrations_seed_the_issues_table_then_the_price_data(prices):
    seeded = {
        (p.provider, p.model): (p.input_per_million, p.output_per_million, p.cached_input_per_million,
                                p.cache_write_per_million)
        for p in ModelPrice.objects.filter(source=PriceSource.SEED)
    }  # fmt: skip
    for key, (inp, out, cached, write) in ISSUE_PRICES.items():
        assert seeded.pop(key) == (D(inp), D(out), _opt(cached), _opt(write)), key
    assert seeded == {("local", "local-page"): (D(0), D(0), None, None)}, "only the free local provider besides"
    assert not ModelPrice.objects.filter(source=PriceSource.OPERATOR).exists()
    # every model the price data prices is priced now; the Gemma models it lists without a price are not
    now = timezone.now()
    unpriced = [
        (m.provider, m.name) for m, _ in catalogue.price_data_models()
        if price_in_force(provider=m.provider, model=m.name, at=now) is None
    ]  # fmt: skip
    assert unpriced == [("google", m) for m in ("gemma-3", "gemma-3n", "gemma-4-26b-a4b-it", "gemma-4-31b-it")]
    # where the issue's table and the data differ, the data's price takes effect at the sync, after the seed
    old = price_in_force(provider="google", model="gemini-1.5-pro", at=utc(2025, 5, 1))
    new = price_in_force(provider="google", model="gemini-1.5-pro", at=now)
    assert (old.source, old.input_per_million) == (PriceSource.SEED, D("3.5"))
    assert (new.source, new.input_per_million, new.tiers["input_per_million"]) == (
        PriceSource.PRICE_DATA,
        D("1.25"),
        [[128_000, "2.5"]],
    )
    # where they agree, nothing was added
    assert ModelPrice.objects.filter(provider="openai", model="gpt-4o-mini").count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_data_migrations_run_forwards_and_backwards():
    executor = MigrationExecutor(connection)
    latest = [key for key in executor.loader.graph.leaf_nodes() if key[0] == "usage"]
    executor.migrate([("usage", "0002_modelprice_non_negative")])
    assert ModelPrice.objects.count() == 0
    MigrationExecutor(connection).migrate([("usage", "0005_modelprice_source_tiers")])
    assert ModelPrice.objects.count() == len(ISSUE_PRICES) + 1
    MigrationExecutor(connection).migrate([("usage", "0006_seed_price_data")])
    assert ModelPrice.objects.filter(source=PriceSource.SEED).count() == len(ISSUE_PRICES) + 1
    synced = ModelPrice.objects.filter(source=PriceSource.PRICE_DATA).count()
    assert synced > 100
    again = price_data_migration.seed_price_data(ModelPrice, TokenUsage)
    assert (again.added, ModelPrice.objects.filter(source=PriceSource.PRICE_DATA).count()) == ([], synced)
    MigrationExecutor(connection).migrate([("usage", "0005_modelprice_source_tiers")])
    assert ModelPrice.objects.count() == len(ISSUE_PRICES) + 1
    MigrationExecutor(connection).migrate(latest)
    assert seed_migration.seed_prices(ModelPrice) == 0, "seeding again inserts nothing"


def test_cost_uses_the_cached_input_price_and_an_alias_shares_the_canonical_price(prices, user):
    # gpt-4o: 600k fresh input x 2.50 + 400k cached x 1.25 + 100k output x 10 = 1.50 + 0.50 + 1.00
    row = record(
        user, provider="openai", model="gpt-4o-2024-08-06", prompt=1_000_000, cached=400_000, completion=100_000,
        at=utc(2025, 5, 1, 12),
    )  # fmt: skip
    assert row.model == "gpt-4o"
    assert row.cost == D("3.000000000")


def test_anthropic_cache_reads_and_writes_are_priced_apart(prices, user):
    # normalized at record time: prompt = 10k fresh + 200k cache read + 50k cache write
    row = record(
        user, provider="anthropic", model="claude-3-5-sonnet-20241022", prompt=260_000, cached=200_000,
        cache_write=50_000, completion=20_000, at=utc(2025, 5, 1),
    )  # fmt: skip
    # 10k x 3 + 200k x 0.30 + 50k x 3.75 + 20k x 15 = 0.03 + 0.06 + 0.1875 + 0.30
    assert row.cost == D("0.577500000")


def test_without_a_cached_price_cached_tokens_cost_the_input_price(prices, user):
    row = record(user, provider="openai", model="gpt-4", prompt=1_000, cached=1_000, completion=0, at=utc(2025, 5, 1))
    assert row.cost == D("0.030000000")


def test_sub_cent_costs_are_kept_exactly(prices, user):
    # gpt-4o-mini cached input is 0.075 per million: 1 token costs 0.000000075
    row = record(user, provider="openai", model="gpt-4o-mini", prompt=1, cached=1, at=utc(2025, 5, 1))
    assert row.cost == D("0.000000075")


def test_unpriced_models_get_a_null_cost_never_zero(prices, user, settings):
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # an OpenAI-compatible server: any model name
    gemma = record(user, provider="google", model="gemma-4-31b-it", prompt=1000, completion=10, at=utc(2025, 5, 1))
    custom = record(user, provider="openai", model="llama3.1:8b", prompt=1000, completion=10, at=utc(2025, 5, 1))
    before_any_price = record(user, model="sim-small", prompt=1000, completion=10, at=utc(2023, 12, 31, 23, 59))
    assert gemma.cost is None and custom.cost is None and before_any_price.cost is None


def test_a_price_change_mid_range_keeps_old_rows_at_the_old_price(prices, user):
    old = record(user, prompt=1_000_000, completion=1_000_000, at=utc(2025, 3, 10))  # 1 + 2
    price = services.price_set(
        provider="simulated", model="sim-small", input_per_million="4", output_per_million="8",
        effective_from=utc(2025, 3, 15),
    )  # fmt: skip
    new = record(user, prompt=1_000_000, completion=1_000_000, at=utc(2025, 3, 20))  # 4 + 8
    old.refresh_from_db()
    assert (old.cost, new.cost) == (D("3"), D("12"))
    assert ModelPrice.objects.filter(provider="simulated", model="sim-small").count() == 2, "history kept"

    body = usage_report(filters=report_filters(start=utc(2025, 3, 1).date(), end=utc(2025, 3, 31).date()))
    assert body["total_estimated_cost"] == "15.000000"
    assert body["by_date"]["2025-03-10"]["estimated_cost"] == "3.000000"
    assert body["by_date"]["2025-03-20"]["estimated_cost"] == "12.000000"

    # a later change (effective now) reprices nothing already recorded
    services.price_set(provider="simulated", model="sim-small", input_per_million="100", output_per_million="100")
    assert sorted(TokenUsage.objects.values_list("cost", flat=True)) == [D("3"), D("12")]
    assert price.effective_from == utc(2025, 3, 15)


def test_price_set_defaults_to_now_and_accepts_aliases(prices):
    before = timezone.now()
    price = services.price_set(
        provider="anthropic", model="claude-3-haiku-20240307", input_per_million="0.8", output_per_million="4",
        cached_input_per_million="0.08", cache_write_per_million="1",
    )  # fmt: skip
    assert price.model == "claude-3-haiku" and before <= price.effective_from <= timezone.now()
    assert price.input_per_million == D("0.8") and price.cache_write_per_million == D("1")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"provider": "azure"}, "unknown provider"),
        ({"model": "gpt-5-ultra"}, "unknown model"),
        ({"input_per_million": "-1"}, "must not be negative"),
        ({"output_per_million": "abc"}, "must be a decimal number"),
        ({"output_per_million": None}, "output_per_million is required"),
        ({"input_per_million": "0.0000001"}, "at most 6 decimal places"),
        ({"input_per_million": "1000000"}, "at most 999999.999999"),
        ({"input_per_million": "NaN"}, "finite"),
        ({"input_per_million": 1.5}, "not 1.5"),
        ({"cached_input_per_million": "-0.1"}, "must not be negative"),
        ({"effective_from": "2025-02-30"}, "not a valid date"),
        ({"effective_from": "next tuesday"}, "must be YYYY-MM-DD"),
        ({"effective_from": "2024-01-01"}, "already has a price effective from"),
        ({"effective_from": "2025-04-30"}, "usage recorded at 2025-05-01"),
    ],
)
def test_price_set_refuses_bad_input_and_changes_nothing(prices, user, changes, message):
    record(user, provider="openai", model="gpt-4o", prompt=10, at=utc(2025, 5, 1))
    before = list(ModelPrice.objects.order_by("id").values())
    kwargs = {
        "provider": "openai", "model": "gpt-4o", "input_per_million": "2", "output_per_million": "8", **changes
    }  # fmt: skip
    with pytest.raises(InvalidInput, match=message):
        services.price_set(**kwargs)
    assert list(ModelPrice.objects.order_by("id").values()) == before


def test_a_price_after_the_last_recorded_call_is_accepted(prices, user):
    record(user, provider="openai", model="gpt-4o", prompt=10, at=utc(2025, 5, 1, 10))
    price = services.price_set(
        provider="openai", model="gpt-4o", input_per_million="2", output_per_million="8",
        effective_from=utc(2025, 5, 1, 10) + timedelta(microseconds=1),
    )  # fmt: skip
    assert price.pk


def test_prices_load_is_all_or_nothing_and_idempotent(prices):
    future = (timezone.now() + timedelta(days=30)).date().isoformat()
    good = [
        {"provider": "google", "model": "gemma-4-31b-it", "input_per_million": "12.5", "output_per_million": D("37.5")},
        {"provider": "simulated", "model": "sim-large", "input_per_million": 11, "output_per_million": "22",
         "effective_from": future},
    ]  # fmt: skip
    bad = [*good, {"provider": "google", "model": "gemini-pro", "input_per_million": "-1", "output_per_million": "1"}]
    count = ModelPrice.objects.count()
    with pytest.raises(InvalidInput, match=r"prices\[2\]: input_per_million must not be negative"):
        services.prices_load(data=bad)
    assert ModelPrice.objects.count() == count

    first = services.prices_load(data={"prices": good})
    assert len(first.created) == 2 and first.unchanged == 0
    gemma = ModelPrice.objects.get(model="gemma-4-31b-it")
    assert (gemma.input_per_million, gemma.output_per_million) == (D("12.5"), D("37.5"))
    # the same file again: the dated entry is already there, the undated one is a new price from now
    good[0]["effective_from"] = gemma.effective_from.isoformat()
    again = services.prices_load(data=good)
    assert (len(again.created), again.unchanged) == (0, 2)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"nope": []}, "expected a JSON list"),
        ([], "no prices"),
        (["x"], r"prices\[0\] must be an object"),
        ([{"provider": "openai"}], r"prices\[0\]\.model is required"),
        ([{"provider": "openai", "model": "gpt-4", "input": "1"}], "unknown fields input"),
        (
            [{"provider": "openai", "model": "gpt-4", "input_per_million": "1", "output_per_million": "2",
              "effective_from": "2024-01-01"}],
            "already has a different price",
        ),
        (
            [{"provider": "openai", "model": "gpt-4", "input_per_million": "1", "output_per_million": "2",
              "effective_from": "2030-01-01"}] * 2,
            "twice",
        ),
    ],
)  # fmt: skip
def test_prices_load_rejects_malformed_files(prices, data, message):
    count = ModelPrice.objects.count()
    with pytest.raises(InvalidInput, match=message):
        services.prices_load(data=data)
    assert ModelPrice.objects.count() == count


def test_a_user_with_usage_cannot_be_deleted_so_spend_history_survives(prices, user):
    from django.db.models import ProtectedError

    record(user, provider="openai", model="gpt-4o", prompt=1000, completion=10, at=utc(2025, 5, 1, 12))
    with pytest.raises(ProtectedError):
        user.delete()
    assert TokenUsage.objects.filter(owner=user).count() == 1
