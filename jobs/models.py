"""AIJob and JobAttempt (DESIGN.md §5). Status changes happen only in jobs.transitions, as conditional UPDATEs."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models

from jobs.errors import ErrorType


class Priority(models.TextChoices):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELED = "canceled"


MAX_ATTEMPTS_LIMIT = 10  # the most attempts one submission or retry may be granted

FINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.DEAD, JobStatus.CANCELED)
WAITING_STATUSES = (JobStatus.QUEUED, JobStatus.RETRYING)
UNFINISHED_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.RETRYING)


class BatchStatus(models.TextChoices):
    RUNNING = "running"
    COMPLETED = "completed"  # every job reached a final state
    CANCELED = "canceled"  # canceled by its owner or an operator; finished_at once its last job ended


class Batch(models.Model):
    """Jobs submitted together (jobs.batches). Finished once, when its last job reaches a final state
    (jobs.accounting.batches_settle); its counts and cost are read from its jobs, never stored."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ai_batches")
    status = models.CharField(max_length=10, choices=BatchStatus.choices, default=BatchStatus.RUNNING)
    total = models.PositiveIntegerField()
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True, default="")
    # {"url", "events"} checked at submit (webhooks.records.webhook_spec_clean with BATCH_EVENTS); null: none.
    # batch.completed is written with the UPDATE that finishes the batch (jobs.accounting.batches_settle); its
    # job events were copied onto the jobs that carry no webhook of their own (jobs.batches).
    webhook = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        verbose_name_plural = "batches"
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="batch_owner_created"),
            # reconcile's sweep reads only the batches still open
            models.Index(fields=["created_at"], name="batch_unfinished", condition=models.Q(finished_at__isnull=True)),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="batch_owner_idempotency_key",
            ),
        ]

    def __str__(self) -> str:
        return f"batch {self.id} ({self.status})"


class AIJob(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # no index of its own: aijob_owner_created (owner, -created_at) leads with it and serves every lookup by owner
    # (one index fewer for each submission's INSERT to update)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ai_jobs", db_index=False
    )
    provider = models.CharField(max_length=20)
    model = models.CharField(max_length=200)
    prompt = models.TextField()
    options = models.JSONField(default=dict, blank=True)
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.NORMAL)
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    # Lifetime attempt count; the current budget is max_attempts attempts counted from budget_base.
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    budget_base = models.PositiveIntegerField(default=0)
    result = models.JSONField(null=True, blank=True)
    error_type = models.CharField(max_length=32, choices=ErrorType.choices, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True, default="")
    # The RQ job that currently carries this job: the AIJob id for the first delivery,
    # "<id>_<n>" for later ones (a running RQ job cannot re-enqueue itself under its own id).
    rq_job_id = models.CharField(max_length=64, blank=True, default="")
    deliveries = models.PositiveIntegerField(default=0)
    # The batch it was submitted in; indexed with status below (a batch's counts are one GROUP BY on it).
    batch = models.ForeignKey(
        Batch, on_delete=models.CASCADE, null=True, blank=True, related_name="jobs", db_index=False
    )
    # {"url", "events"} checked at submit (webhooks.records.webhook_spec_clean); null: no webhook. On the row the
    # claim returns, so a job without one costs its end nothing.
    webhook = models.JSONField(null=True, blank=True)
    # Routing (jobs.routing.chains): the targets to fall back on, [{"provider", "model"}, ...] (null: the default
    # chain of AI_FALLBACKS, read when each attempt is routed), how to order them, and the target of the latest
    # attempt (the one that produced the result, once succeeded).
    fallbacks = models.JSONField(null=True, blank=True, default=None)
    routing_policy = models.CharField(max_length=10, default="ordered")
    served_provider = models.CharField(max_length=20, blank=True, default="")
    served_model = models.CharField(max_length=200, blank=True, default="")
    # The W3C traceparent of the request that submitted the job (aipb.tracing): every attempt's span continues
    # that trace, whichever worker runs it and however often Redis lost the delivery. Empty when tracing was off.
    traceparent = models.CharField(max_length=55, blank=True, default="")

    class Meta:
        ordering = ("-created_at",)
        indexes = [
            models.Index(fields=["owner", "-created_at"], name="aijob_owner_created"),
            models.Index(fields=["status", "-created_at"], name="aijob_status_created"),
            models.Index(fields=["provider", "model", "-created_at"], name="aijob_provider_model"),
            models.Index(fields=["error_type", "-created_at"], name="aijob_error_type"),
            models.Index(fields=["-created_at"], name="aijob_created"),
            models.Index(fields=["status", "lease_expires_at"], name="aijob_status_lease"),
            models.Index(fields=["finished_at"], name="aijob_finished"),
            models.Index(
                fields=["batch", "status"], name="aijob_batch_status", condition=models.Q(batch__isnull=False)
            ),
            # one user's waiting jobs, counted at each submission (jobs.fairness.queued_check)
            models.Index(fields=["owner"], condition=models.Q(status__in=WAITING_STATUSES), name="aijob_owner_waiting"),
        ]
        permissions = [("submit_high_priority", "Can submit jobs with high priority")]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="aijob_owner_idempotency_key",
            ),
            models.CheckConstraint(condition=models.Q(max_attempts__gte=1), name="aijob_max_attempts_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def attempts_left(self) -> int:
        return max(0, self.max_attempts - (self.attempts - self.budget_base))


class AttemptOutcome(models.TextChoices):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABANDONED = "abandoned"


# What an attempt shows outside the database: the API's attempt_history, the admin inline, the dead letter's copy.
ATTEMPT_FIELDS = (
    "number",
    "outcome",
    "error_type",
    "error_message",
    "started_at",
    "finished_at",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "provider_request_id",
    "provider",
    "model",
)


class JobAttempt(models.Model):
    job = models.ForeignKey(AIJob, on_delete=models.CASCADE, related_name="attempt_set")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=10, choices=AttemptOutcome.choices)
    error_type = models.CharField(max_length=32, choices=ErrorType.choices, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    provider_request_id = models.CharField(max_length=200, blank=True, default="")
    # The target that served the attempt (its job's own, or one of its fallbacks); blank when not known (an
    # attempt abandoned by a worker that never came back).
    provider = models.CharField(max_length=20, blank=True, default="")
    model = models.CharField(max_length=200, blank=True, default="")
    # Did the model's output pass page validation? None when there was no output to validate.
    validation_passed = models.BooleanField(null=True, blank=True)

    class Meta:
        ordering = ("job", "number")
        constraints = [models.UniqueConstraint(fields=["job", "number"], name="jobattempt_job_number")]
        indexes = [models.Index(fields=["started_at"], name="jobattempt_started")]

    def __str__(self) -> str:
        return f"{self.job_id} #{self.number} {self.outcome}"
