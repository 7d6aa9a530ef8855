"""Job endpoints: parse, call one service or selector, serialize."""

from __future__ import annotations

import re
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
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
from jobs import actions, queue_control, selectors
from jobs.catalogue import PROVIDER_IDS, providers_status
from jobs.errors import ErrorType
from jobs.models import MAX_ATTEMPTS_LIMIT, JobStatus, Priority
from jobs.serializers import JobOutputSerializer, JobSummarySerializer
from jobs.submission import job_submit
from jobs.throttles import SubmitThrottle


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

    def get_throttles(self):
        return [SubmitThrottle()] if self.request.method == "POST" else []

    @extend_schema(
        operation_id="ai_jobs_list",
        parameters=[JobListParams],
        responses={200: paginated(JobSummarySerializer, "PaginatedJobList"), **error_responses(400)},
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
            **error_responses(400, 409, 413, 415, 429, 503),
        },
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False)],
    )
    def post(self, request):
        fields = parse_body(self.InputSerializer, request.data)
        key = request.headers.get("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= 255:
            raise serializers.ValidationError({"Idempotency-Key": ["must be 1 to 255 characters"]})
        if key is not None and "\x00" in key:  # PostgreSQL text cannot hold NUL
            raise serializers.ValidationError({"Idempotency-Key": ["must not contain NUL characters"]})
        job, created = job_submit(owner=request.user, idempotency_key=key, **fields)
        job = selectors.job_get(user=request.user, job_id=job.id)
        return Response(
            JobOutputSerializer(job).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )


class JobDetailApi(APIView):
    @extend_schema(responses={200: JobOutputSerializer, **error_responses(404)})
    def get(self, request, job_id):
        return Response(JobOutputSerializer(selectors.job_get(user=request.user, job_id=job_id)).data)

    @extend_schema(responses={204: None, **error_responses(404, 409)})
    def delete(self, request, job_id):
        actions.job_delete(job_id=job_id, owner=None if request.user.is_staff else request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class JobRetryApi(APIView):
    @extend_schema(request=None, responses={202: JobOutputSerializer, **error_responses(404, 409)})
    def post(self, request, job_id):
        job = actions.job_retry(job_id=job_id, owner=None if request.user.is_staff else request.user)
        job = selectors.job_get(user=request.user, job_id=job.id)
        return Response(JobOutputSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class JobCancelApi(APIView):
    @extend_schema(request=None, responses={200: JobOutputSerializer, **error_responses(404, 409)})
    def post(self, request, job_id):
        job = actions.job_cancel(job_id=job_id, owner=None if request.user.is_staff else request.user)
        job = selectors.job_get(user=request.user, job_id=job.id)
        return Response(JobOutputSerializer(job).data)


class ProviderListApi(APIView):
    @extend_schema(responses={200: serializers.ListSerializer(child=serializers.DictField()), **error_responses()})
    def get(self, request):
        return Response(providers_status())


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

    @extend_schema(parameters=[JobMetricsParams], responses={200: OpenApiTypes.OBJECT, **error_responses(400)})
    def get(self, request):
        params = parse_query(JobMetricsParams, request)
        since = params.get("since") or timezone.now() - timedelta(hours=24)
        return Response(selectors.job_metrics(since=since))


# --- queue control (staff only) ---


class QueuePauseInput(StrictSerializer):
    reason = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)


class QueueIntakeInput(StrictSerializer):
    open = serializers.BooleanField(help_text="false closes intake: submissions answer 503 intake_closed")
    reason = serializers.CharField(max_length=500, required=False, default="", allow_blank=True)


class QueueStatusApi(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(
        responses={200: OpenApiTypes.OBJECT, **error_responses(400)},
        summary="Queue sizes per status, paused or not, workers",
    )
    def get(self, request):
        parse_query(StrictSerializer, request)  # no parameters: an unknown one is a 400
        return Response(queue_control.queue_status())


class QueuePauseApi(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(
        request=QueuePauseInput,
        responses={200: OpenApiTypes.OBJECT, **error_responses(400, 413, 415)},
        summary="Stop every worker taking jobs",
    )
    def post(self, request):
        fields = parse_body(QueuePauseInput, request.data)  # no body is {}; a body of 0, [] or null is a 400
        return Response(queue_control.queue_pause(by=request.user.get_username(), **fields))


class QueueResumeApi(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(
        request=None,
        responses={200: OpenApiTypes.OBJECT, **error_responses(400, 413, 415)},
        summary="Let workers take jobs again",
    )
    def post(self, request):
        if request.data != {}:  # no body, or {}; a body of 0, [] or null is not "no body"
            raise serializers.ValidationError({"non_field_errors": ["resume takes no body"]})
        return Response(queue_control.queue_resume(by=request.user.get_username()))


class QueueIntakeApi(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(
        request=QueueIntakeInput,
        responses={200: OpenApiTypes.OBJECT, **error_responses(400, 413, 415)},
        summary="Close or open intake: while closed, submissions answer 503 and workers keep draining",
    )
    def post(self, request):
        fields = parse_body(QueueIntakeInput, request.data)
        return Response(queue_control.queue_intake(by=request.user.get_username(), **fields))
