"""Reads for prices (the usage reports live in usage.reports)."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet
from django.utils import timezone

from jobs import catalogue
from usage.models import ModelPrice


def price_list(*, history: bool = False, at: datetime | None = None) -> QuerySet[ModelPrice]:
    """The price in force at ``at`` (default now) per provider and model, plus any scheduled later;
    with ``history`` every row ever set. Ordered by provider, model, newest first."""
    qs = ModelPrice.objects.order_by("provider", "model", "-effective_from")
    if history:
        return qs
    at = at or timezone.now()
    in_force = (
        ModelPrice.objects.filter(effective_from__lte=at)
        .order_by("provider", "model", "-effective_from")
        .distinct("provider", "model")
        .values("id")
    )
    return qs.filter(id__in=in_force) | qs.filter(effective_from__gt=at)


def price_as_dict(price: ModelPrice) -> dict:
    """The shape ``usage prices list --json`` prints and ``usage prices load`` reads back."""
    return {
        "provider": price.provider,
        "model": price.model,
        "input_per_million": str(price.input_per_million),
        "output_per_million": str(price.output_per_million),
        "cached_input_per_million": _opt(price.cached_input_per_million),
        "cache_write_per_million": _opt(price.cache_write_per_million),
        "effective_from": price.effective_from.isoformat(),
    }


def _opt(value) -> str | None:
    return None if value is None else str(value)


def unpriced_models(*, at: datetime | None = None) -> list[tuple[str, str]]:
    """Catalogue models with no price in force at ``at``: their usage is reported as unpriced."""
    at = at or timezone.now()
    priced = set(ModelPrice.objects.filter(effective_from__lte=at).values_list("provider", "model").distinct())
    return [(m.provider, m.name) for m in catalogue.MODELS if (m.provider, m.name) not in priced]
