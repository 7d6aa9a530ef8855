"""Schedule (a saved job template with a cron expression in a time zone) and ScheduleFiring (one row per firing).

A firing's (schedule, scheduled_for) is unique: the scheduler inserts it before it submits the job, in the same
transaction, and a second scheduler process that reaches the same instant finds the row and skips, so each
firing makes its job exactly once however many schedulers run.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from jobs.models import Priority


class Schedule(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ai_schedules")
    name = models.CharField(max_length=200, blank=True, default="")
    cron = models.CharField(max_length=100)
    timezone = models.CharField(max_length=64, default="UTC")
    # the job template, checked by jobs.submission.job_fields_clean when saved and again at each firing
    prompt = models.TextField()
    provider = models.CharField(max_length=20)
    model = models.CharField(max_length=200)
    priority = models.CharField(max_length=10, choices=Priority.choices, default=Priority.NORMAL)
    options = models.JSONField(default=dict, blank=True)
    max_attempts = models.PositiveSmallIntegerField(default=3)
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
        return f"{self.name or self.prompt[:40]} ({self.cron} {self.timezone})"


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
    # An id, not a foreign key: deleting a job must not cost a lookup here, and the history outlives the job.
    job_id = models.UUIDField(null=True, blank=True)
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ("-scheduled_for", "-id")
        constraints = [
            models.UniqueConstraint(fields=["schedule", "scheduled_for"], name="schedule_firing_once"),
        ]
        indexes = [models.Index(fields=["fired_at"], name="schedule_firing_fired_at")]

    def __str__(self) -> str:
        return f"{self.schedule_id} @ {self.scheduled_for:%Y-%m-%d %H:%M}Z {self.outcome}"
