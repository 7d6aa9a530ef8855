"""Reads of the webhook outbox: the deliveries list and the pending count the metrics scrape reads."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import QuerySet

from webhooks.models import DeliveryStatus, WebhookDelivery

# The pending gauge counts up to this many: an index-only scan of the pending rows (a partial index), whose cost
# stays bounded however far a receiver outage lets the backlog grow; the alert fires far below it.
PENDING_COUNT_CAP = 100_000


def webhook_delivery_list(*, user: AbstractBaseUser, filters: dict) -> QuerySet[WebhookDelivery]:
    qs = WebhookDelivery.objects.select_related("owner")
    if not user.is_staff:
        qs = qs.filter(owner=user)
    for name in ("status", "event_type", "subject_id"):
        if filters.get(name) is not None:
            qs = qs.filter(**{name: filters[name]})
    return qs.order_by("-created_at", "-id")


def webhook_pending_count() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM (SELECT 1 FROM webhooks_webhookdelivery WHERE status = %s LIMIT %s) AS pending",
            [DeliveryStatus.PENDING, PENDING_COUNT_CAP],
        )
        return cursor.fetchone()[0]
