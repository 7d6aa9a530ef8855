"""Dead-letter endpoints (staff only): parse, call one service or selector, serialize."""

from __future__ import annotations

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
from dlq import selectors, services
from dlq.models import DeadLetterStatus
from dlq.serializers import (
    BulkRetryOutputSerializer,
    DeadLetterOutputSerializer,
    DeadLetterRetryOutputSerializer,
    DeadLetterStatsSerializer,
)
from jobs.catalogue import PROVIDER_IDS
from jobs.errors import ErrorType
from jobs.throttles import SubmitThrottle


class DeadLetterFilters(StrictSerializer):
    error_type = serializers.ChoiceField(choices=ErrorType.choices, required=False)
    provider = serializers.ChoiceField(choices=PROVIDER_IDS, required=False)
    model = serializers.CharField(max_length=200, required=False, trim_whitespace=False)  # exact match
    retryable = serializers.BooleanField(required=False)


class DeadLetterListParams(ListParams, DeadLetterFilters):
    status = serializers.ChoiceField(choices=DeadLetterStatus.choices, required=False)


ENTRY_ID = OpenApiParameter(
    "entry_id", {"type": "integer", "minimum": 1}, OpenApiParameter.PATH, description="dead letter id (0 is a 400)"
)


class StaffApi(APIView):
    permission_classes = [IsAdminUser]


# OpenAPI examples (what the serializers below produce)
ENTRY_EXAMPLE = {
    "id": 4821,
    "job_id": "3f6c2a8e-1b5d-4c1e-9a7f-2d8e6b0c4a11",
    "error_type": "AUTH_ERROR",
    "error_message": "openai: 401 invalid_api_key: Incorrect API key provided",
    "retryable": False,
    "attempts": 1,
    "provider": "openai",
    "model": "gpt-4o-mini",
    "status": "open",
    "created_at": "2026-12-03T08:14:05.112Z",
    "resolved_at": None,
}
STATS_EXAMPLE = {
    "total": 153,
    "open": 37,
    "retryable": 30,
    "non_retryable": 7,
    "by_error_type": {"RATE_LIMIT": 22, "TIMEOUT": 8, "AUTH_ERROR": 7},
    "by_provider": {"openai": 29, "anthropic": 8},
    "by_model": {"gpt-4o-mini": 29, "claude-3-haiku-20240307": 8},
    "oldest_at": "2026-12-01T22:40:11.003Z",
    "newest_at": "2026-12-03T08:14:05.112Z",
}


class DeadLetterListApi(StaffApi):
    @extend_schema(
        operation_id="ai_dlq_list",
        summary="List dead letters",
        description=(
            "Dead letters, newest first: one per death of a job (retries exhausted or a non-retryable error), "
            "with the error and the job's provider and model. Filter by status (open, retried, discarded), error "
            "type, provider, exact model and retryable; page with limit and offset. Staff only."
        ),
        examples=[
            OpenApiExample(
                "one page",
                value={"count": 37, "next": None, "previous": None, "results": [ENTRY_EXAMPLE]},
                response_only=True,
            )
        ],
        parameters=[DeadLetterListParams],
        responses={200: paginated(DeadLetterOutputSerializer, "PaginatedDeadLetterList"), **error_responses(400)},
    )
    def get(self, request):
        params = parse_query(DeadLetterListParams, request)
        limit, offset = params.pop("limit"), params.pop("offset")
        qs = selectors.dlq_list(filters=params)
        return Pagination().paginate(
            qs, request, limit=limit, offset=offset, serializer_class=DeadLetterOutputSerializer
        )


class DeadLetterStatsApi(StaffApi):
    @extend_schema(
        summary="Dead-letter counts",
        description=(
            "How many entries are kept and open, open ones by retryability, error type, provider and model, and "
            "the oldest and newest open entry. Staff only."
        ),
        examples=[OpenApiExample("a few open", value=STATS_EXAMPLE, response_only=True)],
        responses={200: DeadLetterStatsSerializer, **error_responses()},
    )
    def get(self, request):
        return Response(DeadLetterStatsSerializer(selectors.dlq_stats()).data)


class DeadLetterRetryApi(StaffApi):
    # a retry costs provider calls like a submission does, so it counts against the same per-user throttle
    throttle_scope = "submit"
    throttle_classes = [SubmitThrottle]

    @extend_schema(
        operation_id="ai_dlq_retry",
        summary="Retry one dead letter's job",
        description=(
            "Puts the entry's job back on the queue with a fresh budget of attempts and marks the entry retried "
            "(with every other open entry of the same job). 409 when the entry is not open, or its job was "
            "deleted (discard it instead); 429 past the submission throttle, which retries count against. Staff "
            "only; recorded in the audit trail."
        ),
        examples=[
            OpenApiExample(
                "queued again",
                value={"dlq_id": 4821, "job_id": "3f6c2a8e-1b5d-4c1e-9a7f-2d8e6b0c4a11", "status": "queued"},
                response_only=True,
                status_codes=["202"],
            )
        ],
        request=None,
        parameters=[ENTRY_ID],
        responses={202: DeadLetterRetryOutputSerializer, **error_responses(400, 404, 409, 429)},
    )
    def post(self, request, entry_id: int):
        entry, job = services.dlq_retry(entry_id=entry_id, actor=Actor.of_api(request))
        data = {"dlq_id": entry.id, "job_id": job.id, "status": job.status}
        return Response(DeadLetterRetryOutputSerializer(data).data, status=status.HTTP_202_ACCEPTED)


class DeadLetterBulkRetryApi(StaffApi):
    @extend_schema(
        operation_id="ai_dlq_retry_bulk",
        summary="Retry every open dead letter matching filters",
        description=(
            "Each matching open entry's job goes back on the queue, each in its own transaction: an entry that "
            "changed meanwhile, or whose job was deleted, is counted as skipped and stops nothing. An empty body "
            "retries every open entry. Staff only; recorded in the audit trail."
        ),
        examples=[
            OpenApiExample(
                "the rate-limited ones of one provider",
                value={"error_type": "RATE_LIMIT", "provider": "openai"},
                request_only=True,
            ),
            OpenApiExample("retried", value={"retried": 22, "skipped": 1}, response_only=True, status_codes=["202"]),
        ],
        request=DeadLetterFilters,
        responses={202: BulkRetryOutputSerializer, **error_responses(400, 413, 415)},
    )
    def post(self, request):
        result = services.dlq_retry_bulk(
            filters=parse_body(DeadLetterFilters, request.data), actor=Actor.of_api(request)
        )
        return Response(BulkRetryOutputSerializer(result.as_dict()).data, status=status.HTTP_202_ACCEPTED)


class DeadLetterDiscardApi(StaffApi):
    @extend_schema(
        summary="Discard one dead letter",
        description=(
            "Closes an open entry: the operator has seen it and the job stays dead. 409 when it is not open. "
            "Staff only; recorded in the audit trail."
        ),
        examples=[
            OpenApiExample(
                "discarded",
                value={**ENTRY_EXAMPLE, "status": "discarded", "resolved_at": "2026-12-03T09:02:44.530Z"},
                response_only=True,
            )
        ],
        request=None,
        parameters=[ENTRY_ID],
        responses={200: DeadLetterOutputSerializer, **error_responses(400, 404, 409)},
    )
    def post(self, request, entry_id: int):
        entry = services.dlq_discard(entry_id=entry_id, actor=Actor.of_api(request))
        return Response(DeadLetterOutputSerializer(entry).data)
