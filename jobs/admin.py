"""AIJob in the Django admin: list, filters, search, the page JSON readable, retry / cancel / delete.

Like the queue API, jobs in the admin are for staff: every active staff user may see them and act
on them. Rows are never edited by hand: every change goes through jobs.actions (the conditional
UPDATEs), so an action racing a worker either wins or is reported as a conflict.
"""

from __future__ import annotations

import json
import logging
import re
import uuid

from django.contrib import admin, messages
from django.db.models import Q
from django.utils import timezone
from django.utils.html import format_html

from aipb.admin_mixins import StaffReadOnlyMixin
from aipb.commands import age
from aipb.exceptions import NotFound, ServiceError
from jobs import actions
from jobs.models import AIJob, JobAttempt
from jobs.serializers import AttemptOutputSerializer

log = logging.getLogger(__name__)
_HEX_PREFIX = re.compile(r"^[0-9a-f]{4,}-?[0-9a-f-]*$")
_PRE = "<pre style='white-space: pre-wrap; margin: 0; max-height: 40em; overflow: auto'>{}</pre>"


class JobAttemptInline(StaffReadOnlyMixin, admin.TabularInline):
    model = JobAttempt
    extra = 0
    can_delete = False
    show_change_link = False
    # what the API shows of an attempt, plus whether its output passed validation
    fields = (*AttemptOutputSerializer.Meta.fields, "validation_passed")
    readonly_fields = fields
    ordering = ("number",)


@admin.register(AIJob)
class AIJobAdmin(StaffReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "status",
        "provider",
        "model",
        "priority",
        "attempts_display",
        "age",
        "owner",
        "error_type",
        "prompt_excerpt",
    )
    list_filter = ("status", "provider", "priority", "error_type", "created_at")
    list_select_related = ("owner",)
    search_fields = ("prompt", "owner__username")
    search_help_text = "A job id (or its first characters), an owner's username, or words from the prompt."
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-id")
    list_per_page = 50
    show_full_result_count = False
    actions = ("retry_selected", "cancel_selected", "delete_selected_jobs")
    inlines = (JobAttemptInline,)
    fieldsets = (
        (None, {"fields": ("id", "status", "owner", "provider", "model", "priority", "created_at")}),
        (
            "Progress",
            {
                "fields": (
                    "attempts",
                    "max_attempts",
                    "budget_base",
                    "started_at",
                    "finished_at",
                    "next_attempt_at",
                    "lease_expires_at",
                    "error_type",
                    "error_message",
                )
            },
        ),
        ("Request", {"fields": ("prompt_display", "options_display", "idempotency_key")}),
        ("Result", {"fields": ("result_display",)}),
        ("Transport", {"classes": ("collapse",), "fields": ("rq_job_id", "deliveries", "updated_at")}),
    )
    readonly_fields = (
        "id",
        "status",
        "owner",
        "provider",
        "model",
        "priority",
        "created_at",
        "attempts",
        "max_attempts",
        "budget_base",
        "started_at",
        "finished_at",
        "next_attempt_at",
        "lease_expires_at",
        "error_type",
        "error_message",
        "prompt_display",
        "options_display",
        "idempotency_key",
        "result_display",
        "rq_job_id",
        "deliveries",
        "updated_at",
    )

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        match = request.resolver_match
        if match and match.url_name and match.url_name.endswith("changelist"):
            qs = qs.defer("result", "options")
        return qs

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip().lower()
        try:
            return queryset.filter(id=uuid.UUID(term)), False
        except ValueError:
            pass
        if _HEX_PREFIX.match(term) and len(term) <= 36:
            # the first characters of an id, as people copy them from logs
            return queryset.filter(
                Q(id__startswith=term) | Q(owner__username=search_term.strip()) | Q(prompt__icontains=term)
            ), False
        return super().get_search_results(request, queryset, search_term)

    # --- actions (each job through its service; conflicts are reported, not raised) ---

    def _apply(self, request, queryset, verb: str, action) -> None:
        done, conflicted, reasons = 0, 0, []
        for pk in queryset.order_by("created_at", "id").values_list("id", flat=True):
            try:
                action(job_id=pk)
                done += 1
            except NotFound:
                conflicted += 1  # deleted meanwhile
            except ServiceError as exc:
                conflicted += 1
                reasons.append(exc.message)
        log.warning("admin: %s %s %d jobs, %d not", request.user.get_username(), verb, done, conflicted)
        if done:
            self.message_user(request, f"{verb} {done} job{'s' if done != 1 else ''}.", messages.SUCCESS)
        if conflicted:
            self.message_user(
                request,
                f"{conflicted} job{'s' if conflicted != 1 else ''} not {verb} (state changed or not allowed).",
                messages.WARNING,
            )
        for reason in reasons[:10]:
            self.message_user(request, reason, messages.WARNING)

    @admin.action(description="Retry the selected dead or canceled jobs (fresh attempt budget)")
    def retry_selected(self, request, queryset):
        self._apply(request, queryset, "retried", actions.job_retry)

    @admin.action(description="Cancel the selected queued or retrying jobs")
    def cancel_selected(self, request, queryset):
        self._apply(request, queryset, "canceled", actions.job_cancel)

    @admin.action(description="Delete the selected jobs that are not running")
    def delete_selected_jobs(self, request, queryset):
        self._apply(request, queryset, "deleted", actions.job_delete)

    # --- display ---

    @admin.display(description="attempts", ordering="attempts")
    def attempts_display(self, obj: AIJob) -> str:
        return f"{obj.attempts}/{obj.max_attempts}"

    @admin.display(description="age", ordering="-created_at")
    def age(self, obj: AIJob) -> str:
        return age(obj.created_at, timezone.now())

    @admin.display(description="prompt")
    def prompt_excerpt(self, obj: AIJob) -> str:
        text = " ".join(obj.prompt.split())
        return text if len(text) <= 60 else text[:59] + "…"

    @admin.display(description="prompt")
    def prompt_display(self, obj: AIJob):
        return format_html(_PRE, obj.prompt)

    @admin.display(description="options (JSON)")
    def options_display(self, obj: AIJob):
        return format_html(_PRE, json.dumps(obj.options, indent=2, sort_keys=True))

    @admin.display(description="page (JSON)")
    def result_display(self, obj: AIJob):
        if obj.result is None:
            return "-"
        return format_html(_PRE, json.dumps(obj.result, indent=2, ensure_ascii=False))
