"""Webhook endpoints: the signing secret, the deliveries list, re-send. Parse, call one service, serialize."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from aipb.api import ListParams, Pagination, StrictSerializer, error_responses, paginated, parse_body, parse_query
from audit.records import Actor
from webhooks.delivery import webhook_delivery_resend
from webhooks.models import DeliveryStatus, EventType
from webhooks.records import webhook_secret_rotate
from webhooks.selectors import webhook_delivery_list
from webhooks.serializers import WebhookDeliveryOutputSerializer, WebhookSecretOutputSerializer

DELIVERY_EXAMPLE = {
    "id": 812,
    "webhook_id": "msg_5f1d0c9e7d5b4c1e9f3a2b8d6e0a1c55",
    "event_type": "job.succeeded",
    "subject_id": "4a1f0c9e-7d5b-4c1e-9f3a-2b8d6e0a1c55",
    "url": "https://hooks.example.com/aipb",
    "status": "delivered",
    "attempts": 2,
    "last_status_code": 200,
    "last_latency_ms": 143,
    "last_error": "",
    "last_attempt_at": "2026-12-03T09:00:14.100000Z",
    "next_attempt_at": None,
    "created_at": "2026-12-03T09:00:07.910000Z",
    "delivered_at": "2026-12-03T09:00:14.243000Z",
    "owner": "alice",
}


class DeliveryListParams(ListParams):
    status = serializers.ChoiceField(choices=DeliveryStatus.choices, required=False)
    event_type = serializers.ChoiceField(choices=EventType.choices, required=False)
    subject_id = serializers.CharField(max_length=64, required=False, help_text="the job (or batch) id")


class SecretInput(StrictSerializer):
    """No fields: a body, if any, must be an empty JSON object (a malformed one is a 400, not a rotation)."""


class WebhookSecretApi(APIView):
    @extend_schema(
        operation_id="ai_webhooks_secret_rotate",
        summary="Create or rotate your webhook signing secret",
        description=(
            "Returns the secret that signs your webhook deliveries (Standard Webhooks: HMAC-SHA256 over "
            "`<webhook-id>.<webhook-timestamp>.<body>`). The first call creates it (a job submitted with a webhook "
            "before that has one created for you); each later call replaces it, and the previous secret keeps "
            "signing too (a second signature in `webhook-signature`) for a grace period "
            "(24 h unless the server sets another), so receivers can switch over. No body, or an empty object."
        ),
        request=SecretInput,
        examples=[
            OpenApiExample(
                "rotated",
                value={"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "previous_secret_expires_at": None},
                response_only=True,
                status_codes=["201"],
            )
        ],
        responses={201: WebhookSecretOutputSerializer, **error_responses(400, 415)},
    )
    def post(self, request):
        parse_body(SecretInput, request.data if request.META.get("CONTENT_LENGTH") not in (None, "", "0") else {})
        row = webhook_secret_rotate(owner=request.user)
        data = {"secret": row.secret, "previous_secret_expires_at": row.previous_expires_at}
        return Response(WebhookSecretOutputSerializer(data).data, status=status.HTTP_201_CREATED)


class WebhookDeliveryListApi(APIView):
    @extend_schema(
        operation_id="ai_webhooks_deliveries_list",
        summary="List webhook deliveries",
        description=(
            "Newest first: each event sent (or to be sent) to a webhook, with its status (pending, delivered, "
            "failed), tries, the last answer's status code, latency and error. Owners see their own, staff all; "
            "filter by status, event type and subject (job) id; page with limit and offset."
        ),
        parameters=[DeliveryListParams],
        examples=[
            OpenApiExample(
                "one page",
                value={"count": 1, "next": None, "previous": None, "results": [DELIVERY_EXAMPLE]},
                response_only=True,
            )
        ],
        responses={
            200: paginated(WebhookDeliveryOutputSerializer, "PaginatedWebhookDeliveryList"),
            **error_responses(400),
        },
    )
    def get(self, request):
        params = parse_query(DeliveryListParams, request)
        limit, offset = params.pop("limit"), params.pop("offset")
        qs = webhook_delivery_list(user=request.user, filters=params)
        return Pagination().paginate(
            qs, request, limit=limit, offset=offset, serializer_class=WebhookDeliveryOutputSerializer
        )


class WebhookDeliveryResendApi(APIView):
    @extend_schema(
        operation_id="ai_webhooks_delivery_resend",
        summary="Send a delivery again",
        description=(
            "A failed (or delivered) delivery goes out again with a fresh budget of tries, the same body and the "
            "same webhook-id. 409 while it is pending. Owners re-send their own; staff any (recorded in the "
            "audit trail)."
        ),
        request=None,
        parameters=[OpenApiParameter("delivery_id", int, OpenApiParameter.PATH)],
        examples=[
            OpenApiExample(
                "pending again",
                value={**DELIVERY_EXAMPLE, "status": "pending", "delivered_at": None},
                response_only=True,
                status_codes=["202"],
            )
        ],
        responses={202: WebhookDeliveryOutputSerializer, **error_responses(404, 409)},
    )
    def post(self, request, delivery_id: int):
        delivery = webhook_delivery_resend(
            delivery_id=delivery_id,
            owner=None if request.user.is_staff else request.user,
            actor=Actor.of_api(request),
        )
        return Response(WebhookDeliveryOutputSerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
