"""Mark migration 0003's rows as the seed, then add the genai-prices data's prices: the rows
`manage.py usage prices sync` adds (the same function), so a fresh database starts with them.

A row that existed before this migration and is not 0003's seed as written was set by an operator:
it stays the price of its model, which the sync then leaves alone. No network: the bundled data.
"""

import importlib

from django.db import migrations

from usage import price_sync

seed_0003 = importlib.import_module("usage.migrations.0003_seed_prices")


def mark_seed_rows(price_model) -> int:
    marked = 0
    for provider, model, inp, out, cached, write in seed_0003.SEED_PRICES:
        marked += price_model.objects.filter(
            provider=provider,
            model=model,
            effective_from=seed_0003.SEED_EFFECTIVE_FROM,
            input_per_million=seed_0003._dec(inp),
            output_per_million=seed_0003._dec(out),
            cached_input_per_million=seed_0003._dec(cached),
            cache_write_per_million=seed_0003._dec(write),
        ).update(source="seed")
    return marked


def seed_price_data(price_model, usage_model) -> price_sync.PricesSynced:
    mark_seed_rows(price_model)
    return price_sync.prices_sync(fetch=False, price_model=price_model, usage_model=usage_model)


def forwards(apps, schema_editor):
    seed_price_data(apps.get_model("usage", "ModelPrice"), apps.get_model("usage", "TokenUsage"))


def backwards(apps, schema_editor):
    apps.get_model("usage", "ModelPrice").objects.filter(source="price-data").delete()


class Migration(migrations.Migration):
    dependencies = [("usage", "0005_modelprice_source_tiers")]

    operations = [migrations.RunPython(forwards, backwards)]
