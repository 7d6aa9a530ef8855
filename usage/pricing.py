"""Prices in force and the cost of one provider call, in Decimal USD."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from jobs.catalogue import canonical_model
from jobs.providers.base import Usage
from usage.models import ModelPrice

MILLION = Decimal(1_000_000)
COST_QUANTUM = Decimal("0.000000001")


def price_in_force(*, provider: str, model: str, at: datetime) -> ModelPrice | None:
    """The newest price effective at ``at``; aliases share their canonical model's price."""
    return (
        ModelPrice.objects.filter(provider=provider, model=canonical_model(provider, model), effective_from__lte=at)
        .order_by("-effective_from")
        .first()
    )


def cost_of(*, usage: Usage, price: ModelPrice | None) -> Decimal | None:
    """None when unpriced: reports count it as unpriced, never as zero."""
    if price is None:
        return None
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    cache_write = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
    fresh_input = usage.prompt_tokens - cached - cache_write
    cached_rate = (
        price.cached_input_per_million if price.cached_input_per_million is not None else price.input_per_million
    )
    write_rate = price.cache_write_per_million if price.cache_write_per_million is not None else price.input_per_million
    total = (
        fresh_input * price.input_per_million
        + cached * cached_rate
        + cache_write * write_rate
        + usage.completion_tokens * price.output_per_million
    ) / MILLION
    return total.quantize(COST_QUANTUM)
