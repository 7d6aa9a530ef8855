"""Queue control endpoints (staff only): status, pause, resume, intake. Parse, call jobs.queue_control, answer
the queue status."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from aipb.api import StrictSerializer, error_responses, parse_body, parse_query
from audit.records import Actor
from jobs import queue_control

QUEUE_EXAMPLE = {
    "paused": False,
    "paused_by": "",
    "paused_at": None,
    "reason": "",
    "intake": {"open": True, "closed_by": "", "closed_at": None, "reason": ""},
    "totals": {"waiting": 12, "active": 8, "delayed": 3, "completed": 5120, "failed": 0},
    "queues": [
        {"name": "ai-high", "waiting": 0, "active": 2, "delayed": 0, "completed": 410, "failed": 0},
        {"name": "ai-default", "waiting": 12, "active": 6, "delayed": 3, "completed": 4610, "failed": 0},
        {"name": "ai-low", "waiting": 0, "active": 0, "delayed": 0, "completed": 100, "failed": 0},
    ],
    "jobs": {"queued": 12, "running": 8, "retrying": 3},
    "workers": [
        {
            "name": "aipb-w1.4711",
            "hostname": "aipb-w1",
            "pid": 4711,
            "state": "busy",
            "queues": ["ai-high", "ai-default", "ai-low"],
            "current_job": "3f6c2a8e-1b5d-4c1e-9a7f-2d8e6b0c4a11",
            "successful_jobs": 2560,
            "failed_jobs": 0,
            "last_heartbeat": "2026-12-03T10:00:02.118Z",
        }
    ],
    "worker_count": 1,
}
_QUEUE_ANSWER = "Answers the queue status (as GET /api/ai/queue) after the change. Staff only; audited."


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
        description=(
            "RQ's view of the AI queues (waiting, active, delayed, completed, failed, per queue and in total), "
            "Postgres' count of queued, running and retrying jobs to compare it with, whether workers are paused "
            "and intake closed (by whom, when, why), and the live workers. Staff only."
        ),
        examples=[OpenApiExample("a busy default queue", value=QUEUE_EXAMPLE, response_only=True)],
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
        description=(
            "Workers finish the attempts they are running and take no new job until resumed; submissions keep "
            "queuing. Idempotent: pausing again keeps the first pause's who, when and why. " + _QUEUE_ANSWER
        ),
        examples=[
            OpenApiExample("with a reason", value={"reason": "provider incident"}, request_only=True),
            OpenApiExample(
                "paused",
                value={
                    **QUEUE_EXAMPLE,
                    "paused": True,
                    "paused_by": "ops",
                    "paused_at": "2026-12-03T10:01:00Z",
                    "reason": "provider incident",
                },
                response_only=True,
            ),
        ],
    )
    def post(self, request):
        fields = parse_body(QueuePauseInput, request.data)  # no body is {}; a body of 0, [] or null is a 400
        return Response(queue_control.queue_pause(actor=Actor.of_api(request), **fields))


class QueueResumeApi(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(
        request=None,
        responses={200: OpenApiTypes.OBJECT, **error_responses(400, 413, 415)},
        summary="Let workers take jobs again",
        description="Lifts a pause; takes no body. " + _QUEUE_ANSWER,
        examples=[OpenApiExample("running again", value=QUEUE_EXAMPLE, response_only=True)],
    )
    def post(self, request):
        if request.data != {}:  # no body, or {}; a body of 0, [] or null is not "no body"
            raise serializers.ValidationError({"non_field_errors": ["resume takes no body"]})
        return Response(queue_control.queue_resume(actor=Actor.of_api(request)))


class QueueIntakeApi(APIView):
    permission_classes = [IsAdminUser]

    @extend_schema(
        request=QueueIntakeInput,
        responses={200: OpenApiTypes.OBJECT, **error_responses(400, 413, 415)},
        summary="Close or open intake: while closed, submissions answer 503 and workers keep draining",
        description=(
            "With `open: false`, every submission answers 503 `intake_closed` until intake is opened again; "
            "queued work keeps running. Idempotent: closing again keeps the first close's who, when and why. "
            + _QUEUE_ANSWER
        ),
        examples=[
            OpenApiExample("close", value={"open": False, "reason": "draining for a migration"}, request_only=True),
            OpenApiExample(
                "closed",
                value={
                    **QUEUE_EXAMPLE,
                    "intake": {
                        "open": False,
                        "closed_by": "ops",
                        "closed_at": "2026-12-03T10:01:00Z",
                        "reason": "draining for a migration",
                    },
                },
                response_only=True,
            ),
        ],
    )
    def post(self, request):
        fields = parse_body(QueueIntakeInput, request.data)
        return Response(queue_control.queue_intake(actor=Actor.of_api(request), **fields))
