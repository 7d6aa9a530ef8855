"""Reads for jobs."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from aipb.exceptions import NotFound
from jobs.models import AIJob

LIST_FILTERS = ("status", "provider", "model", "priority", "error_type")


def job_list(*, user: AbstractBaseUser, filters: dict | None = None) -> QuerySet[AIJob]:
    """Owners see their own jobs, staff see all; newest first."""
    qs = AIJob.objects.select_related("owner").defer("result")
    if not user.is_staff:
        qs = qs.filter(owner=user)
    for key, value in (filters or {}).items():
        if key in LIST_FILTERS and value not in (None, ""):
            qs = qs.filter(**{key: value})
    return qs.order_by("-created_at", "-id")


def job_get(*, user: AbstractBaseUser, job_id: object, with_attempts: bool = True) -> AIJob:
    qs = AIJob.objects.select_related("owner")
    if with_attempts:
        qs = qs.prefetch_related("attempt_set")
    if not user.is_staff:
        qs = qs.filter(owner=user)
    try:
        return qs.get(id=job_id)
    except (AIJob.DoesNotExist, ValueError):
        raise NotFound(f"job {job_id} not found") from None
