"""Schedule (a saved job or batch template with a cron expression in a time zone) and ScheduleFiring (one row per
firing).

A firing's (schedule, scheduled_for) is unique: the scheduler inserts it before it submits the job, in the same
transaction, and a second scheduler process that reaches the same instant finds the row and skips, so each
firing makes its job (or batch) exactly once however many schedulers run.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from jobs.models import Priority


class TemplateKind(models.TextChoices):
    JOB = "job"  # each firing submits one job: the template is the prompt ... routing_policy columns
    BATCH = "batch"  # each firing submits one batch: the template is `batch`


class Schedule(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ai_schedules")
    name = models.CharField(max_length=200, blank=True, default="")
    cron = models.CharField(max_length=100)
    timezone = models.CharField(max_length=64, default="UTC")
    kind = models.CharField(max_length=5, choices=TemplateKind.choices, default=TemplateKind.JOB)
    # the job template (kind job; blank for a batch), checked by the submission's cleaners when saved and again at
    # each firing
    prompt = models.TextField(blank=True)
    provider = models.CharField(max_length=20, blank=True)
    model = models.CharField(max_length=200, blank=True)
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.NORMAL)
    options = models.JSONField(default=dict, blank=True)
    max_attempts = models.PositiveSmallIntegerField(default=3)
    webhook = models.JSONField(null=True, blank=True)  # {"url", "events"}, as a job's (webhooks.records)
    fallbacks = models.JSONField(null=True, blank=True)  # as a job's (jobs.routing.chains); null: AI_FALLBACKS
    routing_policy = models.CharField(max_length=20, blank=True, default="")  # "": the default order
    # the batch template (kind batch): {"jobs": [...], "webhook": {...} | null, "metadata": {...}}, checked by
    # jobs.batches.batch_template_clean when saved and again at each firing; null for a job
    batch = models.JSONField(null=True, blank=True)
    paused = models.BooleanField(default=False)
    # null while paused; the scheduler fires what is due and advances it past now (missed firings coalesce)
    next_fire_at = models.DateTimeField(null=True, blank=True)
    last_fired_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [
            # the scheduler's one query: what is due, active schedules only
            models.Index(fields=["next_fire_at"], name="schedule_due", condition=models.Q(paused=False)),
            models.Index(fields=["owner", "-created_at"], name="schedule_owner_created"),
        ]

    def __str__(self) -> str:
        what = self.name or (f"batch of {len(self.batch['jobs'])}" if self.batch else self.prompt[:40])
        return f"{what} ({self.cron} {self.timezone})"


class FiringTrigger(models.TextChoices):
    CRON = "cron"
    MANUAL = "manual"  # run-now


class FiringOutcome(models.TextChoices):
    SUBMITTED = "submitted"
    FAILED = "failed"  # submission refused (intake closed, provider no longer configured, ...): see error


class ScheduleFiring(models.Model):
    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="firings")
    scheduled_for = models.DateTimeField()
    fired_at = models.DateTimeField(default=timezone.now)
    trigger = models.CharField(max_length=10, choices=FiringTrigger.choices, default=FiringTrigger.CRON)
    outcome = models.CharField(max_length=10, choices=FiringOutcome.choices, default=FiringOutcome.SUBMITTED)
    # Ids, not foreign keys: deleting a job must not cost a lookup here, and the history outlives the job. A job
    # template's firing makes a job, a batch template's a batch.
    job_id = models.UUIDField(null=True, blank=True)
    batch_id = models.UUIDField(null=True, blank=True)
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ("-scheduled_for", "-id")
        constraints = [
            models.UniqueConstraint(fields=["schedule", "scheduled_for"], name="schedule_firing_once"),
        ]
        indexes = [models.Index(fields=["fired_at"], name="schedule_firing_fired_at")]

    def __str__(self) -> str:
        return f"{self.schedule_id} @ {self.scheduled_for:%Y-%m-%d %H:%M}Z {self.outcome}"
