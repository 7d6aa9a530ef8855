"""Job endpoints: parse, call one service or selector, serialize."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from aipb.api import ListParams, Pagination, StrictSerializer, parse_query
from jobs import selectors, services
from jobs.catalogue import PROVIDER_IDS
from jobs.errors import ErrorType
from jobs.models import JobStatus, Priority
from jobs.serializers import JobOutputSerializer, JobSummarySerializer


class JobListParams(ListParams):
    status = serializers.ChoiceField(choices=JobStatus.choices, required=False)
    provider = serializers.ChoiceField(choices=PROVIDER_IDS, required=False)
    model = serializers.CharField(max_length=200, required=False)
    priority = serializers.ChoiceField(choices=Priority.choices, required=False)
    error_type = serializers.ChoiceField(choices=ErrorType.choices, required=False)


class JobListCreateApi(APIView):
    throttle_scope = "submit"

    class InputSerializer(StrictSerializer):
        prompt = serializers.CharField(max_length=20_000, trim_whitespace=False)
        provider = serializers.ChoiceField(choices=PROVIDER_IDS, required=False)
        model = serializers.CharField(max_length=200, required=False)
        priority = serializers.ChoiceField(choices=Priority.choices, required=False, default=Priority.NORMAL)
        options = serializers.DictField(required=False, default=dict)
        max_attempts = serializers.IntegerField(min_value=1, max_value=10, required=False)

    def get_throttles(self):
        return [ScopedRateThrottle()] if self.request.method == "POST" else []

    @extend_schema(parameters=[JobListParams], responses=JobSummarySerializer(many=True))
    def get(self, request):
        params = parse_query(JobListParams, request)
        limit, offset = params.pop("limit"), params.pop("offset")
        qs = selectors.job_list(user=request.user, filters=params)
        return Pagination().paginate(qs, request, limit=limit, offset=offset, serializer_class=JobSummarySerializer)

    @extend_schema(
        request=InputSerializer,
        responses={201: JobOutputSerializer, 200: JobOutputSerializer},
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False)],
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= 255:
            raise serializers.ValidationError({"Idempotency-Key": ["must be 1 to 255 characters"]})
        job, created = services.job_submit(owner=request.user, idempotency_key=key, **data.validated_data)
        job = selectors.job_get(user=request.user, job_id=job.id)
        return Response(
            JobOutputSerializer(job).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class JobDetailApi(APIView):
    @extend_schema(responses=JobOutputSerializer)
    def get(self, request, job_id):
        return Response(JobOutputSerializer(selectors.job_get(user=request.user, job_id=job_id)).data)

    @extend_schema(responses={204: None})
    def delete(self, request, job_id):
        services.job_delete(job_id=job_id, owner=None if request.user.is_staff else request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class JobRetryApi(APIView):
    @extend_schema(request=None, responses={202: JobOutputSerializer})
    def post(self, request, job_id):
        job = services.job_retry(job_id=job_id, owner=None if request.user.is_staff else request.user)
        job = selectors.job_get(user=request.user, job_id=job.id)
        return Response(JobOutputSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class JobCancelApi(APIView):
    @extend_schema(request=None, responses=JobOutputSerializer)
    def post(self, request, job_id):
        job = services.job_cancel(job_id=job_id, owner=None if request.user.is_staff else request.user)
        job = selectors.job_get(user=request.user, job_id=job.id)
        return Response(JobOutputSerializer(job).data)


class ProviderListApi(APIView):
    @extend_schema(responses=serializers.ListSerializer(child=serializers.DictField()))
    def get(self, request):
        from jobs.catalogue import providers_status

        return Response(providers_status())
