"""TokenUsage (one row per provider call that returned usage) and ModelPrice (DESIGN.md §5)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class PriceSource(models.TextChoices):
    OPERATOR = "operator"  # the admin, `usage prices set`, `usage prices load`: always wins over the data
    PRICE_DATA = "price-data"  # `usage prices sync` from the genai-prices data
    SEED = "seed"  # migration 0003's hand-written table, superseded by the price data where they differ


class ModelPrice(models.Model):
    """USD per million tokens. A price change is a new row; history is never repriced.

    ``tiers`` holds the call-dependent rates: ``{field: [[start, "rate"], ...]}``, ascending by start.
    A call whose prompt has more than ``start`` tokens pays that field's ``rate`` for all its tokens of
    that kind (the providers' "cliff" tiers by prompt size, as the price data models them)."""

    provider = models.CharField(max_length=20)
    model = models.CharField(max_length=200)
    input_per_million = models.DecimalField(max_digits=12, decimal_places=6)
    output_per_million = models.DecimalField(max_digits=12, decimal_places=6)
    cached_input_per_million = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    cache_write_per_million = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    tiers = models.JSONField(default=dict, blank=True)
    effective_from = models.DateTimeField()
    source = models.CharField(max_length=20, choices=PriceSource.choices, default=PriceSource.OPERATOR)
    data_version = models.CharField(max_length=64, blank=True, default="")  # the price data a synced row came from
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("provider", "model", "-effective_from")
        constraints = [
            models.UniqueConstraint(fields=["provider", "model", "effective_from"], name="modelprice_unique_from"),
            models.CheckConstraint(
                condition=models.Q(input_per_million__gte=0)
                & models.Q(output_per_million__gte=0)
                & (models.Q(cached_input_per_million__isnull=True) | models.Q(cached_input_per_million__gte=0))
                & (models.Q(cache_write_per_million__isnull=True) | models.Q(cache_write_per_million__gte=0)),
                name="modelprice_non_negative",
            ),
        ]
        indexes = [models.Index(fields=["provider", "model", "-effective_from"], name="modelprice_lookup")]

    def __str__(self) -> str:
        return f"{self.provider}/{self.model} from {self.effective_from:%Y-%m-%d}"


class TokenUsage(models.Model):
    # Billing records outlive accounts: a user with usage cannot be deleted (deactivate them instead).
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="token_usage")
    job = models.ForeignKey("jobs.AIJob", on_delete=models.SET_NULL, null=True, blank=True, related_name="usage")
    attempt = models.PositiveIntegerField()
    provider = models.CharField(max_length=20)
    model = models.CharField(max_length=200)
    prompt_tokens = models.PositiveIntegerField(default=0)  # all input, cached included
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)  # cache reads, part of prompt_tokens
    cache_write_tokens = models.PositiveIntegerField(default=0)  # cache writes, part of prompt_tokens
    cost = models.DecimalField(max_digits=18, decimal_places=9, null=True, blank=True)  # null = unpriced
    created_at = models.DateTimeField(db_index=False)

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            # one row per provider call: recording it again adds nothing (usage.recording)
            models.UniqueConstraint(
                fields=["job", "attempt"], condition=models.Q(job__isnull=False), name="usage_one_row_per_attempt"
            ),
        ]
        indexes = [
            models.Index(fields=["created_at"], name="usage_created"),
            models.Index(fields=["owner", "created_at"], name="usage_owner_created"),
            models.Index(fields=["provider", "model", "created_at"], name="usage_provider_model_created"),
        ]

    def __str__(self) -> str:
        return f"{self.provider}/{self.model} {self.prompt_tokens}+{self.completion_tokens}"
