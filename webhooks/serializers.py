"""Output shapes for webhook deliveries and the secret, shared by the API and the `webhooks` command's --json."""

from __future__ import annotations

from rest_framework import serializers

from webhooks.models import WebhookDelivery


class WebhookDeliveryOutputSerializer(serializers.ModelSerializer):
    webhook_id = serializers.CharField(read_only=True, help_text="the webhook-id header: one per event, for de-dup")
    owner = serializers.CharField(source="owner.username", read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = (
            "id",
            "webhook_id",
            "event_type",
            "subject_id",
            "url",
            "status",
            "attempts",
            "last_status_code",
            "last_latency_ms",
            "last_error",
            "last_attempt_at",
            "next_attempt_at",
            "created_at",
            "delivered_at",
            "owner",
        )


class WebhookSecretOutputSerializer(serializers.Serializer):
    secret = serializers.CharField(help_text="whsec_...: verify deliveries with it (Standard Webhooks)")
    previous_secret_expires_at = serializers.DateTimeField(
        allow_null=True, help_text="until then, deliveries also carry a signature made with the previous secret"
    )
