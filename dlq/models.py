"""DeadLetter: one entry each time a job dies (DESIGN.md §5)."""

from __future__ import annotations

from django.db import models

from jobs.errors import ErrorType


class DeadLetterStatus(models.TextChoices):
    OPEN = "open"
    RETRIED = "retried"
    DISCARDED = "discarded"


class DeadLetter(models.Model):
    # The job may be deleted later; the entry keeps its id and snapshot.
    job = models.ForeignKey("jobs.AIJob", on_delete=models.SET_NULL, null=True, blank=True, related_name="dead_letters")
    job_uuid = models.UUIDField()
    error_type = models.CharField(max_length=32, choices=ErrorType.choices)
    error_message = models.TextField(blank=True, default="")
    retryable = models.BooleanField()
    attempts = models.PositiveIntegerField()
    provider = models.CharField(max_length=20)
    model = models.CharField(max_length=200)
    payload = models.JSONField(default=dict)  # the job's input and attempt history at death
    status = models.CharField(max_length=10, choices=DeadLetterStatus.choices, default=DeadLetterStatus.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="dlq_created"),
            models.Index(fields=["status", "-created_at"], name="dlq_status_created"),
            models.Index(fields=["error_type", "status"], name="dlq_error_type_status"),
            models.Index(fields=["provider", "model", "status"], name="dlq_provider_model_status"),
            models.Index(fields=["job_uuid"], name="dlq_job_uuid"),
            # retention prunes resolved entries oldest first without reading the open ones
            models.Index(fields=["created_at", "id"], name="dlq_resolved_created", condition=~models.Q(status="open")),
        ]

    def __str__(self) -> str:
        return f"DLQ {self.id} {self.error_type} ({self.status})"
