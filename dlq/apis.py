"""Dead-letter endpoints (staff only): parse, call one service or selector, serialize."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from aipb.api import ListParams, Pagination, StrictSerializer, parse_query
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
    model = serializers.CharField(max_length=200, required=False)
    retryable = serializers.BooleanField(required=False)


class DeadLetterListParams(ListParams, DeadLetterFilters):
    status = serializers.ChoiceField(choices=DeadLetterStatus.choices, required=False)


class StaffApi(APIView):
    permission_classes = [IsAdminUser]


class DeadLetterListApi(StaffApi):
    @extend_schema(parameters=[DeadLetterListParams], responses=DeadLetterOutputSerializer(many=True))
    def get(self, request):
        params = parse_query(DeadLetterListParams, request)
        limit, offset = params.pop("limit"), params.pop("offset")
        qs = selectors.dlq_list(filters=params)
        return Pagination().paginate(
            qs, request, limit=limit, offset=offset, serializer_class=DeadLetterOutputSerializer
        )


class DeadLetterStatsApi(StaffApi):
    @extend_schema(responses=DeadLetterStatsSerializer)
    def get(self, request):
        return Response(DeadLetterStatsSerializer(selectors.dlq_stats()).data)


class DeadLetterRetryApi(StaffApi):
    @extend_schema(operation_id="ai_dlq_retry", request=None, responses={202: DeadLetterRetryOutputSerializer})
    def post(self, request, entry_id: int):
        entry, job = services.dlq_retry(entry_id=entry_id)
        data = {"dlq_id": entry.id, "job_id": job.id, "status": job.status}
        return Response(DeadLetterRetryOutputSerializer(data).data, status=status.HTTP_202_ACCEPTED)


class DeadLetterBulkRetryApi(StaffApi):
    @extend_schema(
        operation_id="ai_dlq_retry_bulk", request=DeadLetterFilters, responses={202: BulkRetryOutputSerializer}
    )
    def post(self, request):
        data = DeadLetterFilters(data=request.data)
        data.is_valid(raise_exception=True)
        result = services.dlq_retry_bulk(filters=data.validated_data)
        return Response(BulkRetryOutputSerializer(result.as_dict()).data, status=status.HTTP_202_ACCEPTED)


class DeadLetterDiscardApi(StaffApi):
    @extend_schema(request=None, responses=DeadLetterOutputSerializer)
    def post(self, request, entry_id: int):
        return Response(DeadLetterOutputSerializer(services.dlq_discard(entry_id=entry_id)).data)
