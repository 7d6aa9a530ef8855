"""`GET /api/ai/stats/timeseries`: the live dashboard's data (staff only). Parse, call the selector, answer."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from aipb.api import StrictSerializer, error_responses, parse_query
from monitoring.timeseries import WINDOWS, stats_timeseries


class TimeseriesParams(StrictSerializer):
    window = serializers.ChoiceField(
        choices=list(WINDOWS),
        required=False,
        default="1h",
        help_text="1h: 60 one-minute buckets; 24h: 96 buckets of 15 minutes; 7d: 168 one-hour buckets",
    )


def _series(child: serializers.Field, help_text: str) -> serializers.ListField:
    return serializers.ListField(child=child, help_text=help_text)


def _int_series(help_text: str) -> serializers.ListField:
    return _series(serializers.IntegerField(), help_text)


def _float_series(help_text: str) -> serializers.ListField:
    return _series(serializers.FloatField(allow_null=True), help_text)


class TimeseriesQueueSerializer(serializers.Serializer):
    submitted = _int_series("jobs created in the bucket")
    waiting = _int_series("jobs waiting for their first attempt at the bucket's end")
    wait_p50_seconds = _float_series("median wait from submission to the first claim, of jobs claimed in the bucket")
    wait_p95_seconds = _float_series("95th percentile of the same wait")


class TimeseriesLatencySerializer(serializers.Serializer):
    p50 = _float_series("median attempt latency (ms) of the attempts started in the bucket; null: none")
    p95 = _float_series("95th percentile attempt latency (ms)")


class TimeseriesCurrentSerializer(serializers.Serializer):
    queued = serializers.IntegerField()
    running = serializers.IntegerField()
    retrying = serializers.IntegerField()
    waiting_first_attempt = serializers.IntegerField(help_text="queued jobs no worker has claimed yet")
    oldest_waiting_seconds = serializers.FloatField(
        allow_null=True, help_text="how long the longest-waiting job has waited for a worker"
    )


class TimeseriesTotalsSerializer(serializers.Serializer):
    succeeded = serializers.IntegerField()
    dead = serializers.IntegerField()
    attempts = serializers.IntegerField()
    failed_attempts = serializers.IntegerField()
    submitted = serializers.IntegerField()
    spend_usd = serializers.CharField(help_text="USD, 6 decimals")


class TimeseriesSerializer(serializers.Serializer):
    """Documents the body (built by monitoring.timeseries.stats_timeseries). Every list has one value per bucket."""

    window = serializers.ChoiceField(choices=list(WINDOWS))
    bucket_seconds = serializers.IntegerField()
    start = serializers.DateTimeField(help_text="start of the first bucket (UTC, aligned on the bucket size)")
    end = serializers.DateTimeField(help_text="end of the last bucket, the one holding generated_at")
    generated_at = serializers.DateTimeField()
    settled_until = serializers.DateTimeField(
        help_text="minutes before this come from the rollup; later ones are computed from the rows on each request"
    )
    buckets = serializers.ListField(child=serializers.DateTimeField(), help_text="each bucket's start")
    jobs = serializers.DictField(
        child=serializers.DictField(child=serializers.ListField(child=serializers.IntegerField())),
        help_text="succeeded and dead: provider → jobs that reached that state in the bucket",
    )
    attempts = _int_series("attempts started in the bucket")
    latency_ms = TimeseriesLatencySerializer()
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.IntegerField()),
        help_text="error type → failed attempts started in the bucket",
    )
    spend_usd = _series(serializers.CharField(), "estimated cost of the provider calls recorded in the bucket")
    queue = TimeseriesQueueSerializer()
    running = _int_series("the most attempts in flight at the end of a minute of the bucket")
    current = TimeseriesCurrentSerializer(help_text="now, from the jobs not yet final")
    totals = TimeseriesTotalsSerializer(help_text="sums over the window")


EXAMPLE = {
    "window": "1h",
    "bucket_seconds": 60,
    "start": "2026-12-03T09:01:00Z",
    "end": "2026-12-03T10:01:00Z",
    "generated_at": "2026-12-03T10:00:12.480Z",
    "settled_until": "2026-12-03T09:56:00Z",
    "buckets": ["2026-12-03T09:01:00Z", "2026-12-03T09:02:00Z", "…58 more"],
    "jobs": {"succeeded": {"openai": [41, 38, "…"]}, "dead": {"openai": [0, 1, "…"]}},
    "attempts": [44, 40, "…"],
    "latency_ms": {"p50": [1830.0, 1910.0, "…"], "p95": [4120.0, 4650.0, "…"]},
    "errors": {"RATE_LIMIT": [3, 0, "…"], "TIMEOUT": [0, 1, "…"]},
    "spend_usd": ["0.052310", "0.048870", "…"],
    "queue": {
        "submitted": [45, 39, "…"],
        "waiting": [12, 9, "…"],
        "wait_p50_seconds": [0.8, 0.6, "…"],
        "wait_p95_seconds": [4.2, 3.1, "…"],
    },
    "running": [10, 10, "…"],
    "current": {
        "queued": 9,
        "running": 10,
        "retrying": 2,
        "waiting_first_attempt": 8,
        "oldest_waiting_seconds": 3.4,
    },
    "totals": {
        "succeeded": 2390,
        "dead": 4,
        "attempts": 2466,
        "failed_attempts": 72,
        "submitted": 2405,
        "spend_usd": "3.104220",
    },
}


class StatsTimeseriesApi(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(
        operation_id="ai_stats_timeseries",
        summary="Time series for the live dashboard",
        description=(
            "Jobs succeeded and dead per provider, attempt latency p50/p95, failed attempts by error type, "
            "spend, submissions, jobs waiting and their wait, and attempts in flight, per bucket over the "
            "window, computed by Postgres (settled minutes from a per-minute rollup, the last few from the rows). "
            "Staff only. The admin's live dashboard (/admin/operations/dashboard/) polls it every few seconds."
        ),
        parameters=[TimeseriesParams],
        responses={200: TimeseriesSerializer, **error_responses(400)},
        examples=[OpenApiExample("the last hour (lists shortened)", value=EXAMPLE, response_only=True)],
    )
    def get(self, request):
        params = parse_query(TimeseriesParams, request)
        return Response(stats_timeseries(window=params["window"]))
