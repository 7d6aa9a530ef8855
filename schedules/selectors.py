"""Reads for schedules: owners see their own, staff see all."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from aipb.exceptions import NotFound
from schedules.models import Schedule, ScheduleFiring

RECENT_FIRINGS = 10


def schedule_list(*, user: AbstractBaseUser | None, filters: dict | None = None) -> QuerySet[Schedule]:
    """Newest first. ``user`` None: every schedule (the operator commands)."""
    qs = Schedule.objects.select_related("owner")
    if user is not None and not user.is_staff:
        qs = qs.filter(owner=user)
    filters = filters or {}
    if filters.get("paused") is not None:
        qs = qs.filter(paused=filters["paused"])
    if filters.get("owner"):
        qs = qs.filter(owner__username=filters["owner"])
    return qs.order_by("-created_at", "-id")


def schedule_get(*, user: AbstractBaseUser | None, schedule_id: object) -> Schedule:
    qs = Schedule.objects.select_related("owner")
    if user is not None and not user.is_staff:
        qs = qs.filter(owner=user)
    try:
        return qs.get(id=schedule_id)
    except (Schedule.DoesNotExist, ValueError, TypeError, ValidationError):  # ValidationError: a malformed UUID
        raise NotFound(f"schedule {schedule_id} not found") from None


def schedule_recent_firings(*, schedule: Schedule, limit: int = RECENT_FIRINGS) -> list[ScheduleFiring]:
    return list(ScheduleFiring.objects.filter(schedule=schedule).order_by("-scheduled_for", "-id")[:limit])
