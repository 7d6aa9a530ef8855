"""Webhook deliveries in the Django admin: status, tries, the last answer; filters, search, re-send.

Like the API's staff view, every active staff user may look and re-send; rows change only through
webhooks.delivery (a re-send of someone else's delivery is audited). Secrets are listed, never shown.
"""

from __future__ import annotations

from django.contrib import admin, messages

from aipb.admin_mixins import StaffReadOnlyMixin, badge, timestamp_column
from aipb.exceptions import ServiceError
from audit.models import AuditSource
from audit.records import Actor
from webhooks.delivery import webhook_delivery_resend
from webhooks.models import DeliveryStatus, WebhookDelivery, WebhookSecret

STATUS_COLOURS = {
    DeliveryStatus.PENDING: "#2b7bb9",
    DeliveryStatus.DELIVERED: "#27ae60",
    DeliveryStatus.FAILED: "#c0392b",
}


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(StaffReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "event_type",
        "subject_id",
        "owner",
        "status_badge",
        "attempts",
        "last_status_code",
        "last_latency_ms",
        "url",
        "created_at_s",
        "next_attempt_at_s",
    )
    list_filter = ("status", "event_type")
    search_fields = ("subject_id", "url", "owner__username")
    search_help_text = "A job id, a URL or an owner's username."
    list_select_related = ("owner",)
    ordering = ("-created_at", "-id")
    list_per_page = 50
    show_full_result_count = False
    actions = ("resend_selected",)
    fields = (
        "id",
        "webhook_id",
        "event_type",
        "subject_id",
        "owner",
        "url",
        "status",
        "attempts",
        "attempts_base",
        "last_status_code",
        "last_latency_ms",
        "last_error",
        "last_attempt_at",
        "next_attempt_at",
        "created_at",
        "delivered_at",
        "payload",
    )
    readonly_fields = fields

    created_at_s = timestamp_column("created_at", "created")
    next_attempt_at_s = timestamp_column("next_attempt_at", "next try")

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: WebhookDelivery) -> str:
        return badge(obj.status, STATUS_COLOURS.get(obj.status, "#7f8c8d"))

    @admin.action(description="Re-send the selected deliveries (failed or delivered)")
    def resend_selected(self, request, queryset):
        actor = Actor.of_request(request, source=AuditSource.ADMIN)
        done, refused = 0, []
        for delivery_id in queryset.values_list("id", flat=True):
            try:
                webhook_delivery_resend(delivery_id=delivery_id, actor=actor)
                done += 1
            except ServiceError as exc:
                refused.append(exc.message)
        if done:
            self.message_user(request, f"{done} deliveries will be sent again.", messages.SUCCESS)
        for message in refused[:10]:
            self.message_user(request, message, messages.WARNING)


@admin.register(WebhookSecret)
class WebhookSecretAdmin(StaffReadOnlyMixin, admin.ModelAdmin):
    list_display = ("owner", "created_at", "rotated_at", "previous_expires_at")
    search_fields = ("owner__username",)
    fields = ("owner", "created_at", "rotated_at", "previous_expires_at")
    readonly_fields = fields
