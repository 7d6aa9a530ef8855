"""AuditEntry: one row per staff action that changed or destroyed someone else's data or the queue.

Rows are written by the services (audit.records.audit_record, inside the action's own transaction where it has
one) and never edited: the admin shows them read-only.
"""

from __future__ import annotations

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.utils import timezone


class AuditSource(models.TextChoices):
    API = "api"
    ADMIN = "admin"
    COMMAND = "command"


class AuditAction(models.TextChoices):
    JOB_CANCEL = "job.cancel"
    JOB_RETRY = "job.retry"
    JOB_DELETE = "job.delete"
    BATCH_CANCEL = "batch.cancel"
    JOBS_RETRY_BULK = "jobs.retry_bulk"
    DLQ_RETRY = "dlq.retry"
    DLQ_RETRY_BULK = "dlq.retry_bulk"
    DLQ_DISCARD = "dlq.discard"
    QUEUE_PAUSE = "queue.pause"
    QUEUE_RESUME = "queue.resume"
    QUEUE_INTAKE_CLOSE = "queue.intake_close"
    QUEUE_INTAKE_OPEN = "queue.intake_open"
    QUEUE_CLEAR = "queue.clear"
    PRICE_SET = "price.set"
    PRICES_LOAD = "prices.load"
    PRICES_SYNC = "prices.sync"
    SCHEDULE_DELETE = "schedule.delete"
    SCHEDULE_PAUSE = "schedule.pause"
    SCHEDULE_RESUME = "schedule.resume"
    SCHEDULE_RUN_NOW = "schedule.run_now"
    WEBHOOK_RESEND = "webhook.resend"
    BUDGET_SET = "budget.set"
    BUDGET_CLEAR = "budget.clear"


class AuditEntry(models.Model):
    at = models.DateTimeField(default=timezone.now)
    # A name, not a foreign key: the record must outlive the account (and a command's actor has none).
    actor = models.CharField(max_length=150)
    source = models.CharField(max_length=10, choices=AuditSource.choices)
    action = models.CharField(max_length=32, choices=AuditAction.choices)
    target_type = models.CharField(max_length=32)
    target_id = models.CharField(max_length=64, blank=True, default="")  # empty for a bulk action
    reason = models.TextField(blank=True, default="")
    details = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)

    class Meta:
        ordering = ("-at", "-id")
        verbose_name = "audit entry"
        verbose_name_plural = "audit entries"
        indexes = [
            models.Index(fields=["-at", "-id"], name="audit_at"),
            models.Index(fields=["target_type", "target_id"], name="audit_target"),
            models.Index(fields=["actor", "-at"], name="audit_actor_at"),
        ]

    def __str__(self) -> str:
        target = f"{self.target_type} {self.target_id}".strip()
        return f"{self.action} {target} by {self.actor} ({self.source})"
