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


class Budget(models.Model):
    """A monthly spend limit in USD for one user or one group (a team), per UTC calendar month.

    The default for everyone is a setting (AI_BUDGET_DEFAULT_MONTHLY_USD), not a row: it applies to each user
    without a budget of their own. A group's limit is shared by its members and applies on top of theirs."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="budget"
    )
    group = models.OneToOneField("auth.Group", on_delete=models.CASCADE, null=True, blank=True, related_name="budget")
    monthly_usd = models.DecimalField(max_digits=15, decimal_places=6)
    soft_percent = models.PositiveSmallIntegerField(default=80)  # the nearly-exhausted threshold, % of the limit
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(user__isnull=False, group__isnull=True)
                | models.Q(user__isnull=True, group__isnull=False),
                name="budget_user_xor_group",
            ),
            models.CheckConstraint(condition=models.Q(monthly_usd__gte=0), name="budget_non_negative"),
            models.CheckConstraint(condition=models.Q(soft_percent__gte=1, soft_percent__lte=100), name="budget_soft"),
        ]

    def __str__(self) -> str:
        who = f"user {self.user}" if self.user_id else f"group {self.group}"
        return f"{who}: {self.monthly_usd} USD/month"


class MonthlySpend(models.Model):
    """Month-to-date spend of one user or one group, kept exactly: usage.recording adds a call's cost in the
    statement that inserts its TokenUsage row (a group's row gets the cost of its members' calls), so a user's
    row always equals the sum of their rows' costs that month, and budget checks never scan TokenUsage."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, related_name="+")
    group = models.ForeignKey("auth.Group", on_delete=models.CASCADE, null=True, related_name="+")
    month = models.DateField()  # the 1st of the UTC month
    spent_usd = models.DecimalField(max_digits=18, decimal_places=9, default=0)  # TokenUsage.cost's precision

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(user__isnull=False, group__isnull=True)
                | models.Q(user__isnull=True, group__isnull=False),
                name="monthlyspend_user_xor_group",
            ),
            # NULLS NOT DISTINCT: one index serves both kinds of row as the ON CONFLICT target of one upsert
            models.UniqueConstraint(
                fields=["user", "group", "month"], nulls_distinct=False, name="monthlyspend_one_per_month"
            ),
        ]
        indexes = [models.Index(fields=["month", "spent_usd"], name="monthlyspend_month_spent")]

    def __str__(self) -> str:
        who = f"user {self.user_id}" if self.user_id else f"group {self.group_id}"
        return f"{who} {self.month:%Y-%m}: {self.spent_usd} USD"
