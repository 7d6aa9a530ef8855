"""Job endpoints: parse, call one service or selector, serialize."""

from __future__ import annotations

import re
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from aipb.api import (
    ListParams,
    Pagination,
    StrictSerializer,
    error_responses,
    paginated,
    parse_body,
    parse_query,
)
from audit.records import Actor
from jobs import actions, fairness, selectors
from jobs.catalogue import PROVIDER_IDS
from jobs.errors import ErrorType
from jobs.models import MAX_ATTEMPTS_LIMIT, JobStatus, Priority
from jobs.routing.chains import MAX_FALLBACKS, POLICIES
from jobs.routing.health import providers_health
from jobs.serializers import JobOutputSerializer, JobSummarySerializer, job_output
from jobs.submission import job_submit
from jobs.throttles import SubmitThrottle

JOB_EXAMPLE = {
    "id": "4a1f0c9e-7d5b-4c1e-9f3a-2b8d6e0a1c55",
    "status": "succeeded",
    "provider": "openai",
    "model": "gpt-5-mini",
    "priority": "normal",
    "prompt": "A landing page for a cycling club",
    "options": {},
    "attempts": 1,
    "max_attempts": 3,
    "error_type": "",
    "error_message": "",
    "created_at": "2026-12-03T09:00:00.000000Z",
    "started_at": "2026-12-03T09:00:00.200000Z",
    "finished_at": "2026-12-03T09:00:07.900000Z",
    "next_attempt_at": None,
    "owner": "alice",
    "result": {"title": "Cycling club", "sections": [{"type": "hero", "heading": "Ride with us"}]},
    "attempt_history": [
        {
            "number": 1,
            "outcome": "succeeded",
            "error_type": "",
            "error_message": "",
            "started_at": "2026-12-03T09:00:00.210000Z",
            "finished_at": "2026-12-03T09:00:07.890000Z",
            "latency_ms": 7680,
            "prompt_tokens": 812,
            "completion_tokens": 1450,
            "cached_tokens": 0,
            "provider_request_id": "chatcmpl-123",
        }
    ],
}
SUBMIT_EXAMPLE = {"prompt": "A landing page for a cycling club", "provider": "openai", "model": "gpt-5-mini"}


def _job_example(name: str = "a job", status_code: str = "200") -> OpenApiExample:
    return OpenApiExample(name, value=JOB_EXAMPLE, response_only=True, status_codes=[status_code])


class JobListParams(ListParams):
    status = serializers.ChoiceField(choices=JobStatus.choices, required=False)
    provider = serializers.ChoiceField(choices=PROVIDER_IDS, required=False)
    # an exact-match filter: "\t" matches nothing (200, empty), it does not become a blank 400
    model = serializers.CharField(max_length=200, required=False, trim_whitespace=False)
    priority = serializers.ChoiceField(choices=Priority.choices, required=False)
    error_type = serializers.ChoiceField(choices=ErrorType.choices, required=False)


class JobListCreateApi(APIView):
    throttle_scope = "submit"

    class InputSerializer(StrictSerializer):
        prompt = serializers.CharField(max_length=settings.AI_MAX_PROMPT_CHARS, trim_whitespace=False)
        provider = serializers.ChoiceField(choices=PROVIDER_IDS, required=False)
        model = serializers.CharField(max_length=200, required=False)
        priority = serializers.ChoiceField(choices=Priority.choices, required=False, default=Priority.NORMAL)
        options = serializers.DictField(required=False, default=dict)
        max_attempts = serializers.IntegerField(min_value=1, max_value=MAX_ATTEMPTS_LIMIT, required=False)
        # {"url", "events"}: checked by the service (webhooks.records.webhook_spec_clean), one place for the rules
        webhook = serializers.JSONField(required=False)
        # each {provider, model}, checked by job_submit like provider and model; null or absent: AI_FALLBACKS
        fallbacks = serializers.ListField(
            child=serializers.JSONField(), max_length=MAX_FALLBACKS, required=False, allow_null=True
        )
        routing_policy = serializers.ChoiceField(choices=POLICIES, required=False)

    def get_throttles(self):
        return [SubmitThrottle()] if self.request.method == "POST" else []

    @extend_schema(
        operation_id="ai_jobs_list",
        summary="List jobs",
        description="Newest first, paginated with limit and offset. Owners see their own jobs, staff see all; "
        "filter by status, provider, model, priority and error type.",
        parameters=[JobListParams],
        responses={200: paginated(JobSummarySerializer, "PaginatedJobList"), **error_responses(400)},
        examples=[
            OpenApiExample(
                "one page",
                value={"count": 1, "next": None, "previous": None, "results": [JOB_EXAMPLE]},
                response_only=True,
            )
        ],
    )
    def get(self, request):
        params = parse_query(JobListParams, request)
        limit, offset = params.pop("limit"), params.pop("offset")
        qs = selectors.job_list(user=request.user, filters=params)
        return Pagination().paginate(qs, request, limit=limit, offset=offset, serializer_class=JobSummarySerializer)

    @extend_schema(
        request=InputSerializer,
        responses={
            201: JobOutputSerializer,
            200: JobOutputSerializer,
            **error_responses(400, 403, 409, 413, 415, 429, 503),
        },
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False)],
        summary="Submit a page-generation job",
        description="Validates the prompt, provider and model, commits the job and enqueues it: 201 with the "
        "job. With an Idempotency-Key, sending the same request again answers 200 with the job it made (409 "
        "if the body differs). 403 for priority high without staff or the jobs.submit_high_priority permission; "
        "429 past the submission throttle or with AI_USER_MAX_QUEUED jobs waiting; 503 while intake is closed.",
        examples=[
            OpenApiExample("a page", value=SUBMIT_EXAMPLE, request_only=True),
            OpenApiExample(
                "the job made",
                value={
                    **JOB_EXAMPLE,
                    "status": "queued",
                    "attempts": 0,
                    "started_at": None,
                    "finished_at": None,
                    "result": None,
                    "attempt_history": [],
                },
                response_only=True,
                status_codes=["201"],
            ),
        ],
    )
    def post(self, request):
        fields = parse_body(self.InputSerializer, request.data)
        key = idempotency_key_of(request)
        fairness.priority_check(owner=request.user, priority=fields["priority"])  # before anything is written
        job, created = job_submit(owner=request.user, idempotency_key=key, **fields)
        if created:  # the row as inserted: its owner is request.user, it has no attempts yet
            return Response(job_output(job), status=status.HTTP_201_CREATED)
        # a replay answers with the job as it is now (it may have run since)
        return Response(job_output(selectors.job_get(user=request.user, job_id=job.id)), status=status.HTTP_200_OK)


def job_items_parsed(items: list, *, field: str) -> list[dict]:
    """A batch's items, each checked as POST /api/ai/jobs checks its body; the first bad one is a 400 naming it as
    ``<field>[<index>]`` (a batch's ``jobs``, a schedule's ``batch.jobs``)."""
    parsed = []
    for index, item in enumerate(items):
        try:
            parsed.append(parse_body(JobListCreateApi.InputSerializer, item))
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({f"{field}[{index}]": exc.detail}) from None
    return parsed


def idempotency_key_of(request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise serializers.ValidationError({"Idempotency-Key": ["must be 1 to 255 characters"]})
    if key is not None and "\x00" in key:  # PostgreSQL text cannot hold NUL
        raise serializers.ValidationError({"Idempotency-Key": ["must not contain NUL characters"]})
    return key


class JobDetailApi(APIView):
    @extend_schema(
        responses={200: JobOutputSerializer, **error_responses(404)},
        summary="One job with its result and attempts",
        description="The job, its page when it succeeded, and every attempt with its outcome, error, latency "
        "and tokens. Another user's job is a 404.",
        examples=[_job_example()],
    )
    def get(self, request, job_id):
        return Response(job_output(selectors.job_get(user=request.user, job_id=job_id)))

    @extend_schema(
        responses={204: None, **error_responses(404, 409)},
        summary="Delete a job",
        description="Deletes a job that is not running, with its attempts and result (usage rows stay, for "
        "billing). 409 while it runs: cancel is for waiting jobs.",
        examples=[OpenApiExample("deleted", value=None, response_only=True, status_codes=["204"])],
    )
    def delete(self, request, job_id):
        actions.job_delete(
            job_id=job_id, owner=None if request.user.is_staff else request.user, actor=Actor.of_api(request)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class JobRetryApi(APIView):
    # a retry costs provider calls like a submission does, so it counts against the same per-user throttle
    throttle_scope = "submit"
    throttle_classes = [SubmitThrottle]

    @extend_schema(
        request=None,
        responses={202: JobOutputSerializer, **error_responses(404, 409, 429)},
        summary="Retry a dead or canceled job",
        description="Puts the job back on the queue with a fresh budget of max_attempts further attempts and "
        "resolves its dead letters. 409 unless it is dead or canceled; 429 past the submission throttle, which "
        "retries count against.",
        examples=[_job_example("queued again", "202")],
    )
    def post(self, request, job_id):
        job = actions.job_retry(
            job_id=job_id, owner=None if request.user.is_staff else request.user, actor=Actor.of_api(request)
        )
        job = selectors.job_get(user=request.user, job_id=job.id)
        return Response(JobOutputSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class JobCancelApi(APIView):
    @extend_schema(
        request=None,
        responses={200: JobOutputSerializer, **error_responses(404, 409)},
        summary="Cancel a waiting job",
        description="A queued or retrying job becomes canceled and its delivery is removed; a running one "
        "cannot be canceled (409) and finishes.",
        examples=[_job_example("canceled")],
    )
    def post(self, request, job_id):
        job = actions.job_cancel(
            job_id=job_id, owner=None if request.user.is_staff else request.user, actor=Actor.of_api(request)
        )
        job = selectors.job_get(user=request.user, job_id=job.id)
        return Response(JobOutputSerializer(job).data)


class ProviderListApi(APIView):
    @extend_schema(
        summary="Providers and their models",
        description=(
            "Every provider: whether it is configured here (`available`; a job naming one that is not is refused "
            "at submit), its default model, where its model list comes from, and each model's aliases and context "
            "limit. With an OpenAI-compatible OPENAI_BASE_URL, `any_model_name` is true: every name the server "
            "has is accepted. Each model has its `circuit` (closed, half_open, open); staff also see its recent "
            "`p50_latency_ms` and `error_rate` (provider-side failures among its recent calls) and `last_probe_at`."
        ),
        examples=[
            OpenApiExample(
                "one provider, one model",
                value=[
                    {
                        "id": "openai",
                        "available": True,
                        "default_model": "gpt-4o-mini",
                        "models_from": "genai-prices",
                        "any_model_name": False,
                        "models": [
                            {
                                "name": "gpt-4o-mini",
                                "aliases": ["gpt-4o-mini-2024-07-18"],
                                "context_tokens": 128000,
                                "deprecated": False,
                            }
                        ],
                    }
                ],
                response_only=True,
            )
        ],
        responses={200: serializers.ListSerializer(child=serializers.DictField()), **error_responses()},
    )
    def get(self, request):
        return Response(providers_health(full=request.user.is_staff))


_RELATIVE_SINCE = re.compile(r"^(\d{1,7})([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class JobMetricsParams(StrictSerializer):
    since = serializers.CharField(
        required=False,
        max_length=64,
        help_text="start of the window: an ISO 8601 datetime, or a duration back from now (90s, 30m, 24h, 7d); "
        "default 24h",
    )

    def validate_since(self, value: str):
        now = timezone.now()
        match = _RELATIVE_SINCE.match(value.strip())
        try:
            if match:
                seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
                if seconds <= 0:
                    raise serializers.ValidationError("the window must be longer than zero")
                since = now - timedelta(seconds=seconds)
            else:
                since = parse_datetime(value.strip())
                if since is None:
                    raise serializers.ValidationError(
                        "must be an ISO 8601 datetime or a duration such as 90s, 30m, 24h or 7d"
                    )
                if timezone.is_naive(since):
                    since = timezone.make_aware(since, timezone.get_current_timezone())
        except (ValueError, OverflowError):
            raise serializers.ValidationError("is out of range") from None
        if since >= now:
            raise serializers.ValidationError("must be in the past")
        return since


class JobMetricsApi(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(
        summary="Job metrics over a window",
        description=(
            "Computed by Postgres since `since` (default 24 h): jobs by status (counted by creation time), success "
            "rate (succeeded / succeeded + dead), and, for the attempts started in the window, attempts, retries, "
            "processing time (average, p50, p95, p99 in ms), the validation pass rate of model outputs and failed "
            "attempts by error type. Staff only. For charts over time, see /api/ai/stats/timeseries."
        ),
        examples=[
            OpenApiExample(
                "the last 24 hours",
                value={
                    "since": "2026-12-02T10:00:00Z",
                    "until": "2026-12-03T10:00:00Z",
                    "jobs": {
                        "total": 1210,
                        "by_status": {
                            "queued": 3,
                            "running": 4,
                            "retrying": 1,
                            "succeeded": 1190,
                            "dead": 9,
                            "canceled": 3,
                        },
                    },
                    "success_rate": 0.9925,
                    "attempts": 1262,
                    "retries": 48,
                    "processing_time_ms": {"avg": 2140.5, "p50": 1870, "p95": 4480, "p99": 9120},
                    "validation": {"checked": 1230, "passed": 1211, "pass_rate": 0.9846},
                    "errors": {"total": 57, "by_type": {"RATE_LIMIT": 31, "VALIDATION_ERROR": 19, "TIMEOUT": 7}},
                },
                response_only=True,
            )
        ],
        parameters=[JobMetricsParams],
        responses={200: OpenApiTypes.OBJECT, **error_responses(400)},
    )
    def get(self, request):
        params = parse_query(JobMetricsParams, request)
        since = params.get("since") or timezone.now() - timedelta(hours=24)
        return Response(selectors.job_metrics(since=since))
