"""Usage endpoints: parse, call one report, serialize (JSON) or stream (CSV).

Staff see everyone's usage and may filter by ``user``; anyone else gets only their own usage
(``user`` ignored). Every parameter is checked before anything is computed.
"""

from __future__ import annotations

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import IsAdminUser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from aipb.api import StrictSerializer, error_responses, parse_query
from jobs.catalogue import PROVIDER_IDS
from usage import budgets, reports, selectors

FORMATS = ("json", "csv")


class JsonErrorsNegotiation(BaseContentNegotiation):
    """JSON for the body and every error; the view itself picks CSV from ``format`` or ``Accept``.

    DRF's default would answer ``?format=xml`` with a 404 and ``Accept: text/csv`` with a 406
    before the view could say what is wrong.
    """

    def select_renderer(self, request, renderers, format_suffix=None):
        renderer = JSONRenderer()
        return renderer, renderer.media_type


def wants_csv(request, fmt: str | None) -> bool:
    if fmt:
        return fmt == "csv"
    for item in request.headers.get("Accept", "").split(","):
        media = item.split(";", 1)[0].strip().lower()
        if media == "text/csv":
            return True
        if media in ("application/json", "*/*", "application/*"):
            return False
    return False


class FilterParams(StrictSerializer):
    provider = serializers.ChoiceField(choices=PROVIDER_IDS, required=False)
    model = serializers.CharField(max_length=200, required=False)
    user = serializers.CharField(max_length=150, required=False, help_text="username; staff only, else ignored")
    top = serializers.IntegerField(min_value=1, max_value=reports.MAX_TOP, required=False, default=reports.DEFAULT_TOP)
    format = serializers.ChoiceField(choices=FORMATS, required=False)


class ReportParams(FilterParams):
    start = serializers.DateField(required=False, help_text="YYYY-MM-DD (UTC); default the 1st of end's month")
    end = serializers.DateField(required=False, help_text="YYYY-MM-DD (UTC), inclusive; default today")


class LastNDaysParams(FilterParams):
    days = serializers.IntegerField(
        min_value=1, max_value=reports.MAX_RANGE_DAYS, required=False, default=reports.DEFAULT_DAYS
    )


class TotalsSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cached_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    estimated_cost = serializers.CharField(help_text="USD, 6 decimals")
    unpriced_requests = serializers.IntegerField()


class TopUserSerializer(serializers.Serializer):
    user = serializers.CharField()
    requests = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    estimated_cost = serializers.CharField()


class ReportSerializer(serializers.Serializer):
    """Documents the report body (built by usage.reports.usage_report)."""

    start = serializers.DateField()
    end = serializers.DateField()
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cached_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()
    total_estimated_cost = serializers.CharField(help_text="USD, 6 decimals")
    unpriced_requests = serializers.IntegerField()
    by_provider = serializers.DictField(child=TotalsSerializer())
    by_model = serializers.DictField(child=TotalsSerializer())
    by_user = serializers.DictField(child=TotalsSerializer())
    by_date = serializers.DictField(child=TotalsSerializer())
    top_users = TopUserSerializer(many=True)


_REPORT_RESPONSES = {
    (200, "application/json"): ReportSerializer,
    (200, "text/csv"): OpenApiResponse(
        response=OpenApiTypes.STR, description="header, then one line per date, provider, model and user"
    ),
    **error_responses(400),
}


_TOTALS_EXAMPLE = {
    "requests": 1204,
    "prompt_tokens": 903000,
    "completion_tokens": 1806000,
    "cached_tokens": 120000,
    "total_tokens": 2709000,
    "estimated_cost": "1.219350",
    "unpriced_requests": 0,
}
REPORT_EXAMPLE = {
    "start": "2026-12-01",
    "end": "2026-12-03",
    "requests": 1204,
    "prompt_tokens": 903000,
    "completion_tokens": 1806000,
    "cached_tokens": 120000,
    "total_tokens": 2709000,
    "total_estimated_cost": "1.219350",
    "unpriced_requests": 0,
    "by_provider": {"openai": _TOTALS_EXAMPLE},
    "by_model": {"gpt-4o-mini": _TOTALS_EXAMPLE},
    "by_user": {"alice": _TOTALS_EXAMPLE},
    "by_date": {"2026-12-03": _TOTALS_EXAMPLE},
    "top_users": [{"user": "alice", "requests": 1204, "total_tokens": 2709000, "estimated_cost": "1.219350"}],
}
_REPORT_EXAMPLES = [
    OpenApiExample("JSON (one user, one model; lists shortened)", value=REPORT_EXAMPLE, response_only=True),
    OpenApiExample(
        "CSV (format=csv or Accept: text/csv)",
        value="date,provider,model,user,requests,prompt_tokens,completion_tokens,cached_tokens,total_tokens,"
        "estimated_cost,unpriced_requests\n2026-12-03,openai,gpt-4o-mini,alice,1204,903000,1806000,120000,2709000,"
        "1.219350,0\n",
        response_only=True,
        media_type="text/csv",
    ),
]
_WHO = (
    " Staff see everyone's usage and may name a `user`; anyone else sees only their own. Costs are the prices in "
    "force at each call, in USD with 6 decimals; calls with no price are counted in unpriced_requests, not in the "
    "cost. `format=csv` (or `Accept: text/csv`) streams one line per day, provider, model and user instead."
)


class _UsageReportBase(APIView):
    content_negotiation_class = JsonErrorsNegotiation

    def respond(self, request, params: dict, start, end):
        """Filters validated here (user lookup included) before the report runs."""
        staff = request.user.is_staff
        filters = reports.report_filters(
            start=start,
            end=end,
            provider=params.get("provider"),
            model=params.get("model"),
            username=params.get("user") if staff else None,
            owner_id=None if staff else request.user.pk,
        )
        if wants_csv(request, params.get("format")):
            response = StreamingHttpResponse(
                reports.csv_stream(filters=filters), content_type="text/csv; charset=utf-8"
            )
            response["Content-Disposition"] = f'attachment; filename="usage-{start.isoformat()}-{end.isoformat()}.csv"'
            return response
        return Response(reports.usage_report(filters=filters, top=params["top"]))


class UsageReportApi(_UsageReportBase):
    @extend_schema(
        summary="Usage and cost over a range of days",
        description="Tokens and estimated cost from `start` to `end` (UTC days, both included; at most 366 days), "
        "in total and by provider, model, user and day, with the top users." + _WHO,
        examples=_REPORT_EXAMPLES,
        parameters=[ReportParams],
        responses=_REPORT_RESPONSES,
    )
    def get(self, request):
        params = parse_query(ReportParams, request)
        start, end = reports.range_between(start=params.get("start"), end=params.get("end"))
        return self.respond(request, params, start, end)


class UsageCurrentMonthApi(_UsageReportBase):
    @extend_schema(
        summary="Usage and cost this month so far",
        description="The report from the 1st of this UTC month to today." + _WHO,
        examples=_REPORT_EXAMPLES,
        parameters=[FilterParams],
        responses=_REPORT_RESPONSES,
    )
    def get(self, request):
        params = parse_query(FilterParams, request)
        start, end = reports.range_month_to_date()
        return self.respond(request, params, start, end)


class UsageLastNDaysApi(_UsageReportBase):
    @extend_schema(
        summary="Usage and cost over the last days",
        description="The report over today and the `days - 1` days before it (UTC; default 30)." + _WHO,
        examples=_REPORT_EXAMPLES,
        parameters=[LastNDaysParams],
        responses=_REPORT_RESPONSES,
    )
    def get(self, request):
        params = parse_query(LastNDaysParams, request)
        start, end = reports.range_last_n_days(days=params["days"])
        return self.respond(request, params, start, end)


class PriceParams(StrictSerializer):
    history = serializers.BooleanField(required=False, default=False)


class PriceSerializer(serializers.Serializer):
    provider = serializers.CharField()
    model = serializers.CharField()
    input_per_million = serializers.CharField()
    output_per_million = serializers.CharField()
    cached_input_per_million = serializers.CharField(allow_null=True)
    cache_write_per_million = serializers.CharField(allow_null=True)
    effective_from = serializers.DateTimeField()


class PriceListSerializer(serializers.Serializer):
    prices = PriceSerializer(many=True)
    unpriced = serializers.ListField(child=serializers.DictField())


class PriceListApi(APIView):
    """Staff only: prices in force (and scheduled), or the whole history with ``history=true``."""

    permission_classes = [IsAdminUser]

    @extend_schema(
        summary="Model prices",
        description=(
            "The price in force for every priced model (and prices scheduled to take effect later), in USD per "
            "million tokens, or every price ever recorded with `history=true`; `unpriced` lists the models with "
            "recorded usage but no price. Staff only."
        ),
        examples=[
            OpenApiExample(
                "one price",
                value={
                    "prices": [
                        {
                            "provider": "openai",
                            "model": "gpt-4o-mini",
                            "input_per_million": "0.150000",
                            "output_per_million": "0.600000",
                            "cached_input_per_million": "0.075000",
                            "cache_write_per_million": None,
                            "effective_from": "2024-07-18T00:00:00Z",
                        }
                    ],
                    "unpriced": [{"provider": "openai", "model": "llama3.1:8b"}],
                },
                response_only=True,
            )
        ],
        parameters=[PriceParams],
        responses={200: PriceListSerializer, **error_responses(400)},
    )
    def get(self, request):
        params = parse_query(PriceParams, request)
        prices = selectors.price_list(history=params["history"])
        return Response(
            {
                "prices": [selectors.price_as_dict(price) for price in prices],
                "unpriced": [{"provider": p, "model": m} for p, m in selectors.unpriced_models()],
            }
        )


class BudgetParams(StrictSerializer):
    # Taken as given: a name that is all whitespace is a name no user has (404), not a blank field.
    user = serializers.CharField(
        min_length=1, max_length=150, trim_whitespace=False, required=False, help_text="username; staff only"
    )


class LimitSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(choices=budgets.Scope.ALL)
    name = serializers.CharField(help_text="the username (user, default) or the group's name")
    limit_usd = serializers.CharField(help_text="USD per UTC month, exact")
    spent_usd = serializers.CharField(help_text="this month so far, exact")
    remaining_usd = serializers.CharField()
    soft_percent = serializers.IntegerField(help_text="nearly exhausted from this percent of the limit")
    resets_at = serializers.DateTimeField()


class BudgetSerializer(serializers.Serializer):
    limits = LimitSerializer(many=True)


class BudgetApi(APIView):
    @extend_schema(
        summary="Your spending limits this month",
        description=(
            "The monthly limits that hold you, with this UTC month's spend: your own (or the default for everyone), "
            "and each of your groups' (shared with its members). An empty list means unlimited. When a limit is "
            "reached, submissions answer 429 `budget_exceeded` and waiting jobs end `BUDGET_EXCEEDED` without "
            "calling the provider, until the limit is raised or the month ends (`resets_at`). Staff may name a `user`."
        ),
        examples=[
            OpenApiExample(
                "a user's limit and a team's",
                value={
                    "limits": [
                        {
                            "scope": "user",
                            "name": "alice",
                            "limit_usd": "50",
                            "spent_usd": "12.3405",
                            "remaining_usd": "37.6595",
                            "soft_percent": 80,
                            "resets_at": "2027-01-01T00:00:00Z",
                        },
                        {
                            "scope": "group",
                            "name": "design",
                            "limit_usd": "500",
                            "spent_usd": "402.5",
                            "remaining_usd": "97.5",
                            "soft_percent": 80,
                            "resets_at": "2027-01-01T00:00:00Z",
                        },
                    ]
                },
                response_only=True,
            )
        ],
        parameters=[BudgetParams],
        responses={200: BudgetSerializer, **error_responses(400, 404)},
    )
    def get(self, request):
        params = parse_query(BudgetParams, request)
        user_id = request.user.pk
        if params.get("user") is not None and params["user"] != request.user.get_username():
            if not request.user.is_staff:
                raise exceptions.PermissionDenied("only staff may see another user's limits")
            user_id = budgets.holder_resolve(user=params["user"], group=None).user.pk
        return Response({"limits": [limit.as_dict() for limit in budgets.budget_limits(user_id=user_id)]})
