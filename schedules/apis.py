"""Schedule endpoints: parse, call one service or selector, serialize. Owners see their own, staff see all."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from aipb.api import ListParams, Pagination, error_responses, paginated, parse_body, parse_query
from audit.records import Actor
from jobs import fairness
from jobs.apis import JobListCreateApi, job_items_parsed
from jobs.batch_serializers import BatchInputSerializer
from schedules import selectors, services
from schedules.cron import CRON_MAX_CHARS, TIMEZONE_MAX_CHARS
from schedules.serializers import ScheduleDetailSerializer, ScheduleOutputSerializer
from schedules.services import NAME_MAX

SCHEDULE_EXAMPLE = {
    "id": "9b2e4f61-3c1d-4a7e-8f20-5d6c7b8a9e01",
    "name": "weekday landing page",
    "owner": "alice",
    "cron": "0 9 * * 1-5",
    "timezone": "Europe/Paris",
    "paused": False,
    "next_fire_at": "2026-12-04T08:00:00Z",
    "last_fired_at": "2026-12-03T08:00:00.012000Z",
    "kind": "job",
    "prompt": "A landing page for today's cycling club ride",
    "provider": "openai",
    "model": "gpt-5-mini",
    "priority": "normal",
    "options": {},
    "max_attempts": 3,
    "webhook": None,
    "fallbacks": None,
    "routing_policy": "",
    "batch": None,
    "created_at": "2026-12-01T10:00:00Z",
    "updated_at": "2026-12-01T10:00:00Z",
}
FIRING_EXAMPLE = {
    "id": 17,
    "scheduled_for": "2026-12-03T08:00:00Z",
    "fired_at": "2026-12-03T08:00:00.012000Z",
    "trigger": "cron",
    "outcome": "submitted",
    "job_id": "4a1f0c9e-7d5b-4c1e-9f3a-2b8d6e0a1c55",
    "batch_id": None,
    "error": "",
}


class ScheduleListParams(ListParams):
    paused = serializers.BooleanField(required=False, allow_null=True, default=None)


JOB_FIELDS = frozenset(JobListCreateApi.InputSerializer().fields)


class ScheduleInputSerializer(JobListCreateApi.InputSerializer):
    """The job API's own fields and checks (a job template), or a batch template; plus when to fire."""

    prompt = serializers.CharField(max_length=settings.AI_MAX_PROMPT_CHARS, trim_whitespace=False, required=False)
    batch = serializers.JSONField(
        required=False,
        help_text='a batch template instead of a job: {"jobs": [...], "webhook"?, "metadata"?}, what POST '
        "/api/ai/batches takes; each firing submits the batch",
    )
    name = serializers.CharField(max_length=NAME_MAX, required=False, default="", allow_blank=True)
    cron = serializers.CharField(max_length=CRON_MAX_CHARS)
    timezone = serializers.CharField(max_length=TIMEZONE_MAX_CHARS, required=False, default="UTC")
    paused = serializers.BooleanField(required=False, default=False)


def _batch_template_parsed(data: object) -> dict:
    try:
        template = parse_body(BatchInputSerializer, data)  # what POST /api/ai/batches takes
    except serializers.ValidationError as exc:
        raise serializers.ValidationError({"batch": exc.detail}) from None
    return {**template, "jobs": job_items_parsed(template["jobs"], field="batch.jobs")}


class ScheduleListCreateApi(APIView):
    InputSerializer = ScheduleInputSerializer

    @extend_schema(
        operation_id="ai_schedules_list",
        summary="List schedules",
        description="Newest first, paginated with limit and offset; filter by paused. Owners see their own "
        "schedules, staff see all.",
        parameters=[ScheduleListParams],
        responses={200: paginated(ScheduleOutputSerializer, "PaginatedScheduleList"), **error_responses(400)},
        examples=[
            OpenApiExample(
                "one page",
                value={"count": 1, "next": None, "previous": None, "results": [SCHEDULE_EXAMPLE]},
                response_only=True,
            )
        ],
    )
    def get(self, request):
        params = parse_query(ScheduleListParams, request)
        limit, offset = params.pop("limit"), params.pop("offset")
        qs = selectors.schedule_list(user=request.user, filters=params)
        return Pagination().paginate(qs, request, limit=limit, offset=offset, serializer_class=ScheduleOutputSerializer)

    @extend_schema(
        request=ScheduleInputSerializer,
        responses={201: ScheduleDetailSerializer, **error_responses(400, 409, 413, 415)},
        summary="Create a schedule",
        description="A job template (the fields of POST /api/ai/jobs, webhook, fallbacks and routing_policy "
        "included, checked by the same rules) or a batch template (`batch`: the body of POST /api/ai/batches, "
        "checked by its rules) fired on a five-field cron expression (or @hourly, @daily, @weekly, @monthly, "
        "@yearly) in an IANA time zone (default UTC). Each firing submits one job (or one batch) owned by you. "
        "400 for a bad cron expression, time zone, job field or batch field (naming it); 409 past "
        "AI_SCHEDULES_PER_USER_MAX schedules.",
        examples=[
            OpenApiExample(
                "weekdays at nine, Paris time",
                value={
                    "name": "weekday landing page",
                    "cron": "0 9 * * 1-5",
                    "timezone": "Europe/Paris",
                    "prompt": "A landing page for today's cycling club ride",
                },
                request_only=True,
            ),
            OpenApiExample(
                "a batch every Monday, told when it is done",
                value={
                    "name": "weekly site refresh",
                    "cron": "0 6 * * 1",
                    "batch": {
                        "jobs": [{"prompt": "Home page of a cycling club"}, {"prompt": "Rides this week"}],
                        "webhook": {"url": "https://hooks.example.com/aipb", "events": ["batch.completed"]},
                        "metadata": {"site": "cycling-club"},
                    },
                },
                request_only=True,
            ),
            OpenApiExample(
                "created",
                value={**SCHEDULE_EXAMPLE, "last_fired_at": None, "recent_firings": []},
                response_only=True,
                status_codes=["201"],
            ),
        ],
    )
    def post(self, request):
        fields = parse_body(self.InputSerializer, request.data)
        if "batch" in fields:
            if given := sorted(JOB_FIELDS & set(request.data)):
                raise serializers.ValidationError(
                    {"batch": [f"a batch template carries its jobs' fields in batch.jobs; remove {', '.join(given)}"]}
                )
            fields = {key: fields[key] for key in ("name", "cron", "timezone", "paused")} | {
                "batch": _batch_template_parsed(fields["batch"])
            }
            priorities = [job.get("priority", "") for job in fields["batch"]["jobs"]]
        else:
            priorities = [fields.get("priority", "")]
        # a schedule submits as its owner: high priority needs the same permission as a job (jobs.fairness)
        for priority in priorities:
            fairness.priority_check(owner=request.user, priority=priority)
        schedule = services.schedule_create(owner=request.user, timezone_name=fields.pop("timezone"), **fields)
        return Response(ScheduleDetailSerializer(schedule).data, status=status.HTTP_201_CREATED)


class ScheduleDetailApi(APIView):
    @extend_schema(
        responses={200: ScheduleDetailSerializer, **error_responses(404)},
        summary="One schedule with its recent firings",
        description="The schedule and its ten most recent firings (each with the job it made, or why it failed). "
        "Another user's schedule is a 404.",
        examples=[
            OpenApiExample(
                "a schedule",
                value={**SCHEDULE_EXAMPLE, "recent_firings": [FIRING_EXAMPLE]},
                response_only=True,
            )
        ],
    )
    def get(self, request, schedule_id):
        schedule = selectors.schedule_get(user=request.user, schedule_id=schedule_id)
        return Response(ScheduleDetailSerializer(schedule).data)

    @extend_schema(
        responses={204: None, **error_responses(404)},
        summary="Delete a schedule",
        description="Stops its firings and deletes it with its firing records; the jobs it made stay. Staff "
        "deleting another user's schedule is recorded in the audit trail.",
        examples=[OpenApiExample("deleted", value=None, response_only=True, status_codes=["204"])],
    )
    def delete(self, request, schedule_id):
        services.schedule_delete(
            schedule_id=schedule_id,
            owner=None if request.user.is_staff else request.user,
            actor=Actor.of_api(request),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
