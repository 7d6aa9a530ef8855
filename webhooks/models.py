"""WebhookSecret and WebhookDelivery: the per-user signing secret and the outbox of signed events.

A WebhookDelivery row is an event and its delivery at once (a job carries one webhook URL, so one event goes to
one place). It is written in the transaction of the state change that causes it (webhooks.records), so a change
that rolls back leaves none and a committed one always has one; webhooks.delivery sends it and records each try.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models


class EventType(models.TextChoices):
    JOB_SUCCEEDED = "job.succeeded"
    JOB_DEAD = "job.dead"
    BATCH_COMPLETED = "batch.completed"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"  # waiting for its first try or a retry
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # every try failed (or the URL was refused at delivery): visible, re-sendable


class WebhookSecret(models.Model):
    owner = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_secret")
    secret = models.CharField(max_length=100)
    # The secret before the last rotation, still signed with until previous_expires_at (receivers switch over).
    previous_secret = models.CharField(max_length=100, blank=True, default="")
    previous_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    rotated_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"webhook secret of {self.owner_id}"


class WebhookDelivery(models.Model):
    # The Standard Webhooks message id (header webhook-id, "msg_<hex>"): the same on every try and re-send, so a
    # receiver can drop duplicates.
    event_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_deliveries")
    event_type = models.CharField(max_length=32, choices=EventType.choices)
    subject_id = models.CharField(max_length=64, blank=True, default="")  # the job (or batch) the event is about
    url = models.TextField()
    # The body as sent: {"type", "timestamp", "data"}, fixed when the event was written.
    payload = models.JSONField(encoder=DjangoJSONEncoder)
    status = models.CharField(max_length=10, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    # Tries over the row's life; a re-send starts a fresh budget counted from attempts_base.
    attempts = models.PositiveIntegerField(default=0)
    attempts_base = models.PositiveIntegerField(default=0)
    # When the next try is due; while one runs, when its lease ends (the sweeper re-enqueues a row past it).
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        verbose_name_plural = "webhook deliveries"
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="whdelivery_owner_created"),
            models.Index(fields=["status", "-created_at"], name="whdelivery_status_created"),
            models.Index(fields=["subject_id"], name="whdelivery_subject"),
            # the sweeper's and the pending gauge's reads: only pending rows, however many were delivered
            models.Index(
                fields=["next_attempt_at"],
                condition=models.Q(status="pending"),
                name="whdelivery_pending_due",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.subject_id} ({self.status})"

    @property
    def webhook_id(self) -> str:
        return f"msg_{self.event_id.hex}"

    @property
    def attempts_left(self) -> int:
        return max(0, 1 + len(settings.AI_WEBHOOK_RETRY_SCHEDULE) - (self.attempts - self.attempts_base))
