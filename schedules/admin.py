"""Schedule and ScheduleFiring in the Django admin: list, filters, search, and the run-now, pause and resume
actions. Staff only, like the jobs; rows change only through schedules.services (the API creates schedules, with
the job rules' checks), and a staff action on someone else's schedule is recorded in the audit trail."""

from __future__ import annotations

import logging

from django.contrib import admin, messages

from aipb.admin_mixins import StaffReadOnlyMixin, timestamp_column
from aipb.exceptions import NotFound, ServiceError
from audit.models import AuditSource
from audit.records import Actor
from schedules import services
from schedules.models import Schedule, ScheduleFiring

log = logging.getLogger(__name__)


class ScheduleFiringInline(StaffReadOnlyMixin, admin.TabularInline):
    model = ScheduleFiring
    extra = 0
    can_delete = False
    fields = ("scheduled_for_s", "fired_at_s", "trigger", "outcome", "job_id", "batch_id", "error")
    readonly_fields = fields
    ordering = ("-scheduled_for", "-id")
    scheduled_for_s = timestamp_column("scheduled_for", "scheduled for")
    fired_at_s = timestamp_column("fired_at", "fired")

    def get_queryset(self, request):
        return super().get_queryset(request).order_by("-scheduled_for", "-id")


@admin.register(Schedule)
class ScheduleAdmin(StaffReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "name",
        "owner",
        "kind",
        "cron",
        "timezone",
        "paused",
        "next_fire_at_s",
        "last_fired_at_s",
        "provider",
        "model",
    )
    list_filter = ("kind", "paused", "provider", "priority", "timezone")
    list_select_related = ("owner",)
    search_fields = ("name", "prompt", "owner__username", "cron")
    search_help_text = "Words from a schedule's name or prompt, an owner's username, or a cron expression."
    ordering = ("-created_at", "-id")
    list_per_page = 50
    actions = ("run_now_selected", "pause_selected", "resume_selected")
    inlines = (ScheduleFiringInline,)
    fields = (
        "id",
        "name",
        "owner",
        "cron",
        "timezone",
        "paused",
        "next_fire_at_s",
        "last_fired_at_s",
        "kind",
        "prompt",
        "provider",
        "model",
        "priority",
        "options",
        "max_attempts",
        "webhook",
        "fallbacks",
        "routing_policy",
        "batch",
        "created_at_s",
    )
    readonly_fields = fields
    next_fire_at_s = timestamp_column("next_fire_at", "next firing")
    last_fired_at_s = timestamp_column("last_fired_at", "last fired")
    created_at_s = timestamp_column("created_at", "created")

    def _apply(self, request, queryset, verb: str, action) -> None:
        done, refused, reasons = 0, 0, []
        actor = Actor.of_request(request, source=AuditSource.ADMIN)
        for pk in queryset.order_by("created_at", "id").values_list("id", flat=True):
            try:
                action(schedule_id=pk, actor=actor)
                done += 1
            except NotFound:
                refused += 1  # deleted meanwhile
            except ServiceError as exc:
                refused += 1
                reasons.append(exc.message)
        log.warning("admin: %s %s %d schedules, %d not", request.user.get_username(), verb, done, refused)
        if done:
            self.message_user(request, f"{verb} {done} schedule{'s' if done != 1 else ''}.", messages.SUCCESS)
        if refused:
            self.message_user(request, f"{refused} schedule{'s' if refused != 1 else ''} not {verb}.", messages.WARNING)
        for reason in reasons[:10]:
            self.message_user(request, reason, messages.WARNING)

    @admin.action(description="Run the selected schedules now (one job or batch each; their cron firings go on)")
    def run_now_selected(self, request, queryset):
        self._apply(request, queryset, "ran", services.schedule_run_now)

    @admin.action(description="Pause the selected schedules")
    def pause_selected(self, request, queryset):
        self._apply(request, queryset, "paused", services.schedule_pause)

    @admin.action(description="Resume the selected schedules (from the next instant after now)")
    def resume_selected(self, request, queryset):
        self._apply(request, queryset, "resumed", services.schedule_resume)


@admin.register(ScheduleFiring)
class ScheduleFiringAdmin(StaffReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "schedule",
        "scheduled_for_s",
        "fired_at_s",
        "trigger",
        "outcome",
        "job_id",
        "batch_id",
        "error",
    )
    list_filter = ("outcome", "trigger", "scheduled_for")
    list_select_related = ("schedule",)
    search_fields = ("schedule__name", "schedule__owner__username", "error")
    ordering = ("-scheduled_for", "-id")
    list_per_page = 50
    show_full_result_count = False
    scheduled_for_s = timestamp_column("scheduled_for", "scheduled for")
    fired_at_s = timestamp_column("fired_at", "fired")
