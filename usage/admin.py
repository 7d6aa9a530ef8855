"""Admin: TokenUsage read-only (each row linked to its job; `?job=<id>` lists one job's); ModelPrice edits add a
new row (history kept); the spend page: any range of days, by provider, model, user and day, and its CSV; Budget
edits and deletes go through usage.budgets (validated, audited)."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, Max, Min, OuterRef, Q, QuerySet, Subquery
from django.http import StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from aipb.admin_mixins import timestamp_column
from aipb.exceptions import ServiceError
from audit.models import AuditSource
from audit.records import Actor
from jobs import catalogue
from usage import budgets, reports, services, spend_page
from usage.models import Budget, ModelPrice, MonthlySpend, PriceSource, TokenUsage
from usage.recording import month_of

# --- TokenUsage ---


class ProviderFilter(admin.SimpleListFilter):
    """Choices from the catalogue, not a DISTINCT over the whole table."""

    title = "provider"
    parameter_name = "provider"

    def lookups(self, request, model_admin):
        return [(provider, provider) for provider in catalogue.PROVIDER_IDS]

    def queryset(self, request, queryset):
        return queryset.filter(provider=self.value()) if self.value() else queryset


class ModelFilter(admin.SimpleListFilter):
    title = "model"
    parameter_name = "model"

    def lookups(self, request, model_admin):
        provider = request.GET.get("provider")
        return [(m.name, m.name) for m in catalogue.MODELS if not provider or m.provider == provider]

    def queryset(self, request, queryset):
        return queryset.filter(model=self.value()) if self.value() else queryset


class PricedFilter(admin.SimpleListFilter):
    title = "cost"
    parameter_name = "priced"

    def lookups(self, request, model_admin):
        return [("yes", "priced"), ("no", "unpriced")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(cost__isnull=self.value() == "no")
        return queryset


class JobFilter(admin.SimpleListFilter):
    """`?job=<id>`: one job's usage rows, the link from a job's and a dead letter's page. In the sidebar only
    while it filters (Django applies a filter only when it has a choice to show); an id that is not a UUID
    lists nothing."""

    title = "job"
    parameter_name = "job"

    def lookups(self, request, model_admin):
        value = request.GET.get(self.parameter_name)
        return [(value, value[:8] + "…")] if value else []

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        try:
            return queryset.filter(job_id=uuid.UUID(self.value()))
        except ValueError:
            return queryset.none()


class DateHierarchyQuerySet(QuerySet):
    """The date hierarchy's year and month links from MIN/MAX (two index probes) instead of a
    DISTINCT over every row in view, which grows with the table. A year or month without rows may
    be offered; following it shows an empty list."""

    def datetimes(self, field_name, kind, order="ASC", tzinfo=None):
        if kind not in ("year", "month"):
            return super().datetimes(field_name, kind, order, tzinfo)
        bounds = self.aggregate(first=Min(field_name), last=Max(field_name))
        if bounds["first"] is None:
            return []
        first, last = (timezone.localtime(bounds[k]) for k in ("first", "last"))
        step = first.replace(
            month=1 if kind == "year" else first.month, day=1, hour=0, minute=0, second=0, microsecond=0
        )
        out = []
        while step <= last:
            out.append(step)
            if kind == "year":
                step = step.replace(year=step.year + 1)
            else:
                step = step.replace(year=step.year + (step.month == 12), month=step.month % 12 + 1)
        return out if order == "ASC" else out[::-1]


@admin.register(TokenUsage)
class TokenUsageAdmin(admin.ModelAdmin):
    list_display = (
        "created_at_s",
        "owner",
        "provider",
        "model",
        "job_link",
        "attempt",
        "prompt_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "completion_tokens",
        "cost_usd",
    )
    list_filter = (ProviderFilter, ModelFilter, PricedFilter, JobFilter, "created_at")
    date_hierarchy = "created_at"
    search_fields = ("=owner__username",)
    search_help_text = "exact username"
    list_select_related = ("owner",)
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # facet counts are a COUNT per filter choice over a large table
    list_per_page = 100
    ordering = ("-created_at",)

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        return DateHierarchyQuerySet(model=qs.model, query=qs.query, using=qs.db)

    created_at_s = timestamp_column("created_at", "created")

    @admin.display(description="cost (USD)", ordering="cost")
    def cost_usd(self, obj: TokenUsage) -> str:
        return "unpriced" if obj.cost is None else str(obj.cost)

    @admin.display(description="job")
    def job_link(self, obj: TokenUsage):
        if obj.job_id is None:
            return "-"  # the job was deleted; the billing row stays
        return format_html('<a href="{}">{}</a>', reverse("admin:jobs_aijob_change", args=[obj.job_id]), obj.job_id)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def get_urls(self):
        spend = path("spend/", self.admin_site.admin_view(self.spend_view), name="usage_tokenusage_spend")
        return [spend, *super().get_urls()]

    def spend_view(self, request):
        """Spend over a range of UTC days (this month so far unless asked), by provider, model, user and day, as
        tables and bars (inline SVG and CSS, no scripts); `format=csv` downloads the report's CSV lines."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        form = spend_page.SpendForm(request.GET)
        filters, report = None, None
        if form.is_valid():
            try:
                start, end = reports.range_between(start=form.cleaned_data["start"], end=form.cleaned_data["end"])
                filters = reports.report_filters(
                    start=start,
                    end=end,
                    provider=form.cleaned_data["provider"] or None,
                    model=form.cleaned_data["model"] or None,
                    username=form.cleaned_data["user"] or None,
                )
            except ServiceError as exc:
                form.add_error(None, exc.message)
        if filters is not None and request.GET.get("format") == "csv":
            rows = reports.csv_stream(filters=filters)
            response = StreamingHttpResponse(rows, content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = (
                f'attachment; filename="usage-{filters.start.isoformat()}-{filters.end.isoformat()}.csv"'
            )
            return response
        if filters is not None:
            report = reports.usage_report(filters=filters, top=reports.MAX_TOP)
            report["by_date"] = spend_page.every_day(report["by_date"], filters)
        query = request.GET.copy()
        query["format"] = "csv"
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"Spend {report['start']} to {report['end']} (UTC)" if report else "Spend",
            "form": form,
            "summary": report,
            "providers": spend_page.provider_bars(report["by_provider"]) if report else [],
            "chart": spend_page.day_chart(report["by_date"]) if report else None,
            "csv_url": "?" + query.urlencode() if report else "",
            "changelist_url": reverse("admin:usage_tokenusage_changelist"),
            "prices_url": reverse("admin:usage_modelprice_changelist"),
        }
        return TemplateResponse(request, "admin/usage/spend.html", context)


# --- ModelPrice ---


class ModelPriceForm(forms.ModelForm):
    class Meta:
        model = ModelPrice
        fields = (
            "provider",
            "model",
            "input_per_million",
            "output_per_million",
            "cached_input_per_million",
            "cache_write_per_million",
            "effective_from",
        )
        help_texts = {
            "input_per_million": "USD per million input tokens",
            "output_per_million": "USD per million output tokens",
            "cached_input_per_million": "USD per million cached input tokens; empty = the input price",
            "cache_write_per_million": "USD per million cache-write tokens; empty = the input price",
            "effective_from": "UTC; empty = now. Saving always adds a new price row; the old one is kept. "
            "It cannot take effect before usage already recorded for the model (that is never repriced).",
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "provider" in self.fields:  # absent on edit, where provider and model are read-only
            self.fields["provider"] = forms.ChoiceField(choices=[(p, p) for p in catalogue.PROVIDER_IDS])
        # An edit is a new price from the moment it is saved (not the old row's date, nor the moment the
        # form was opened: a busy model records usage meanwhile, and a price may not predate recorded usage).
        self.fields["effective_from"].required = False
        self.initial["effective_from"] = None

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        provider = cleaned.get("provider", self.instance.provider)
        model = cleaned.get("model", self.instance.model)
        prices = {name: cleaned.get(name) for name in services.PRICE_FIELDS}
        if self.instance.pk and all(prices[name] == getattr(self.instance, name) for name in prices):
            raise forms.ValidationError("No price changed: a new row is only added when a price changes.")
        try:
            self.price = services.price_validate(
                provider=provider, model=model, effective_from=cleaned.get("effective_from"), **prices
            )
        except ServiceError as exc:
            raise forms.ValidationError(exc.message) from None
        return cleaned


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    form = ModelPriceForm
    list_display = (
        "provider",
        "model",
        "input_per_million",
        "output_per_million",
        "cached_input_per_million",
        "cache_write_per_million",
        "tiered",
        "effective_from",
        "source",
        "status",
    )
    list_filter = ("provider", "source")
    search_fields = ("model",)
    ordering = ("provider", "model", "-effective_from")
    list_per_page = 200

    def get_queryset(self, request):
        now = timezone.now()
        same_model = ModelPrice.objects.filter(
            provider=OuterRef("provider"), model=OuterRef("model"), effective_from__lte=now
        )
        newer = same_model.filter(effective_from__gt=OuterRef("effective_from"))
        return (
            super()
            .get_queryset(request)
            .annotate(
                superseded=Exists(newer),
                superseded_by_operator=Exists(newer.filter(source=PriceSource.OPERATOR)),
                operator_priced=Exists(same_model.filter(source=PriceSource.OPERATOR)),
            )
        )

    @admin.display(description="status")
    def status(self, obj: ModelPrice) -> str:
        """As usage.pricing.price_in_force decides: an operator's price wins over the price data's."""
        if obj.effective_from > timezone.now():
            return "scheduled"
        if obj.source == PriceSource.OPERATOR:
            return "superseded" if getattr(obj, "superseded_by_operator", False) else "in force"
        if getattr(obj, "operator_priced", False):
            return "overridden by an operator's price"
        return "superseded" if getattr(obj, "superseded", False) else "in force"

    @admin.display(description="tiered", boolean=True)
    def tiered(self, obj: ModelPrice) -> bool:
        return bool(obj.tiers)

    def get_readonly_fields(self, request, obj=None):
        return ("provider", "model", "tiers", "source", "data_version", "created_at") if obj else ()

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # price history is what recorded costs were computed with

    def save_model(self, request, obj, form, change):
        """Never an UPDATE: the edited values become a new row with their own effective_from."""
        price = services.price_set(
            provider=form.price.provider,
            model=form.price.model,
            input_per_million=form.price.input_per_million,
            output_per_million=form.price.output_per_million,
            cached_input_per_million=form.price.cached_input_per_million,
            cache_write_per_million=form.price.cache_write_per_million,
            effective_from=form.price.effective_from,
            actor=Actor.of_request(request, source=AuditSource.ADMIN),
        )
        for field in ModelPrice._meta.concrete_fields:  # the admin logs and links the row just added
            setattr(obj, field.attname, getattr(price, field.attname))
        obj._state.adding = False
        if change:
            messages.info(
                request,
                f"Added a new price for {price.provider}/{price.model} effective from "
                f"{price.effective_from:%Y-%m-%d %H:%M:%S} UTC; the previous price row is kept.",
            )


# --- Budget ---


class BudgetForm(forms.ModelForm):
    class Meta:
        model = Budget
        fields = ("user", "group", "monthly_usd", "soft_percent")

    def clean(self):
        cleaned = super().clean()
        # a change shows user and group read-only: they are the instance's
        user = cleaned.get("user") if "user" in self.fields else self.instance.user_id
        group = cleaned.get("group") if "group" in self.fields else self.instance.group_id
        if (user is None) == (group is None):
            raise forms.ValidationError("choose exactly one of a user or a group")
        if cleaned.get("monthly_usd") is not None:
            try:
                budgets.usd_parse(cleaned["monthly_usd"])
                if cleaned.get("soft_percent") is not None:
                    budgets.soft_percent_parse(cleaned["soft_percent"])
            except ServiceError as exc:
                raise forms.ValidationError(exc.message) from None
        return cleaned


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    form = BudgetForm
    list_display = ("holder", "monthly_usd", "spent_this_month", "soft_percent", "updated_at")
    list_select_related = ("user", "group")
    search_fields = ("user__username", "group__name")
    raw_id_fields = ("user",)

    def get_queryset(self, request):
        # this month's spend of each row's holder, in the list's one query (not kept on the admin: it is shared
        # by every request)
        month = MonthlySpend.objects.filter(month=month_of(timezone.now()))
        spent = month.filter(
            Q(user_id=OuterRef("user_id"), user_id__isnull=False)
            | Q(group_id=OuterRef("group_id"), group_id__isnull=False)
        ).values("spent_usd")[:1]
        return super().get_queryset(request).annotate(spent=Subquery(spent))

    @admin.display(description="user or group")
    def holder(self, obj: Budget) -> str:
        return f"user {obj.user.get_username()}" if obj.user_id else f"group {obj.group.name}"

    @admin.display(description="spent this month (USD)")
    def spent_this_month(self, obj: Budget) -> str:
        return budgets.usd(getattr(obj, "spent", None) or Decimal(0))

    def get_readonly_fields(self, request, obj=None):
        return ("user", "group") if obj else ()

    def save_model(self, request, obj, form, change):
        saved = budgets.budget_set(
            user=obj.user.get_username() if obj.user_id else None,
            group=obj.group.name if obj.group_id else None,
            monthly_usd=obj.monthly_usd,
            soft_percent=obj.soft_percent,
            actor=Actor.of_request(request, source=AuditSource.ADMIN),
        )
        obj.pk = saved.pk
        obj._state.adding = False

    def delete_model(self, request, obj):
        budgets.budget_clear(
            user=obj.user.get_username() if obj.user_id else None,
            group=obj.group.name if obj.group_id else None,
            actor=Actor.of_request(request, source=AuditSource.ADMIN),
        )

    def delete_queryset(self, request, queryset):
        for obj in queryset.select_related("user", "group"):
            self.delete_model(request, obj)
