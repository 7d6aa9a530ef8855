"""Dead-letter endpoints (staff only): parse, call one service or selector, serialize."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
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


class DeadLetterListApi(StaffApi):
    @extend_schema(
        operation_id="ai_dlq_list",
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
    @extend_schema(responses={200: DeadLetterStatsSerializer, **error_responses()})
    def get(self, request):
        return Response(DeadLetterStatsSerializer(selectors.dlq_stats()).data)


class DeadLetterRetryApi(StaffApi):
    @extend_schema(
        operation_id="ai_dlq_retry",
        request=None,
        parameters=[ENTRY_ID],
        responses={202: DeadLetterRetryOutputSerializer, **error_responses(400, 404, 409)},
    )
    def post(self, request, entry_id: int):
        entry, job = services.dlq_retry(entry_id=entry_id)
        data = {"dlq_id": entry.id, "job_id": job.id, "status": job.status}
        return Response(DeadLetterRetryOutputSerializer(data).data, status=status.HTTP_202_ACCEPTED)


class DeadLetterBulkRetryApi(StaffApi):
    @extend_schema(
        operation_id="ai_dlq_retry_bulk",
        request=DeadLetterFilters,
        responses={202: BulkRetryOutputSerializer, **error_responses(400, 413, 415)},
    )
    def post(self, request):
        result = services.dlq_retry_bulk(filters=parse_body(DeadLetterFilters, request.data))
        return Response(BulkRetryOutputSerializer(result.as_dict()).data, status=status.HTTP_202_ACCEPTED)


class DeadLetterDiscardApi(StaffApi):
    @extend_schema(
        request=None,
        parameters=[ENTRY_ID],
        responses={200: DeadLetterOutputSerializer, **error_responses(400, 404, 409)},
    )
    def post(self, request, entry_id: int):
        return Response(DeadLetterOutputSerializer(services.dlq_discard(entry_id=entry_id)).data)
