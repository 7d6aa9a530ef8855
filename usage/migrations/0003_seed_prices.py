"""Seed prices (USD per million tokens) from issue 5, effective from a fixed early date.

gemini-ultra has no public price: it stays unpriced until an operator sets one.
The local provider makes no network call and costs nothing, so it is priced at zero
(its rows would otherwise be reported as unpriced in every deployment that uses it).
"""

from datetime import UTC, datetime
from decimal import Decimal

from django.db import migrations

SEED_EFFECTIVE_FROM = datetime(2024, 1, 1, tzinfo=UTC)

# provider, model, input, output, cached input, cache write
SEED_PRICES = (
    ("openai", "gpt-4", "30", "60", None, None),
    ("openai", "gpt-4-turbo", "10", "30", None, None),
    ("openai", "gpt-3.5-turbo", "0.50", "1.50", None, None),
    ("openai", "gpt-4o", "2.50", "10", "1.25", None),
    ("openai", "gpt-4o-mini", "0.15", "0.60", "0.075", None),
    ("anthropic", "claude-3-opus", "15", "75", "1.50", "18.75"),
    ("anthropic", "claude-3-sonnet", "3", "15", "0.30", "3.75"),
    ("anthropic", "claude-3-5-sonnet", "3", "15", "0.30", "3.75"),
    ("anthropic", "claude-3-haiku", "0.25", "1.25", "0.03", "0.30"),
    ("anthropic", "claude-sonnet-4", "3", "15", "0.30", "3.75"),
    ("google", "gemini-pro", "0.50", "1.50", None, None),
    ("google", "gemini-1.5-pro", "3.50", "10.50", None, None),
    ("google", "gemini-1.5-flash", "0.075", "0.30", None, None),
    ("google", "gemini-2.0-flash", "0.10", "0.40", "0.025", None),
    ("local", "local-page", "0", "0", None, None),
    ("simulated", "sim-small", "1", "2", None, None),
    ("simulated", "sim-large", "10", "20", None, None),
)


def _dec(value):
    return None if value is None else Decimal(value)


def seed_prices(model_price_cls) -> int:
    """Insert the seed rows that are missing; returns how many were inserted. Idempotent."""
    inserted = 0
    for provider, model, inp, out, cached, write in SEED_PRICES:
        _, created = model_price_cls.objects.get_or_create(
            provider=provider,
            model=model,
            effective_from=SEED_EFFECTIVE_FROM,
            defaults={
                "input_per_million": _dec(inp),
                "output_per_million": _dec(out),
                "cached_input_per_million": _dec(cached),
                "cache_write_per_million": _dec(write),
            },
        )
        inserted += created
    return inserted


def forwards(apps, schema_editor):
    seed_prices(apps.get_model("usage", "ModelPrice"))


def backwards(apps, schema_editor):
    model_price = apps.get_model("usage", "ModelPrice")
    for provider, model, *_ in SEED_PRICES:
        model_price.objects.filter(provider=provider, model=model, effective_from=SEED_EFFECTIVE_FROM).delete()


class Migration(migrations.Migration):
    dependencies = [("usage", "0002_modelprice_non_negative")]

    operations = [migrations.RunPython(forwards, backwards)]
