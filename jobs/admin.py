"""AIJob in the Django admin: list, filters, search, the page JSON readable, retry / cancel / delete, and on a
job's own page retry / cancel buttons (each with a confirmation step) and links to its dead letters and usage.

Like the queue API, jobs in the admin are for staff: every active staff user may see them and act
on them. Rows are never edited by hand: every change goes through jobs.actions (the conditional
UPDATEs), so an action racing a worker either wins or is reported as a conflict.
"""

from __future__ import annotations

import json
import logging
import re
import uuid

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import Q
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from aipb import tracing
from aipb.admin_mixins import StaffReadOnlyMixin, badge, timestamp_column
from aipb.commands import age
from aipb.exceptions import NotFound, ServiceError
from audit.models import AuditSource
from audit.records import Actor
from dlq.models import DeadLetter
from jobs import actions
from jobs.models import AIJob, JobAttempt, JobStatus
from jobs.serializers import AttemptOutputSerializer
from usage.models import TokenUsage

log = logging.getLogger(__name__)
_HEX_PREFIX = re.compile(r"^[0-9a-f]{4,}-?[0-9a-f-]*$")
_PRE = "<pre style='white-space: pre-wrap; margin: 0; max-height: 40em; overflow: auto'>{}</pre>"
STATUS_COLOURS = {
    JobStatus.QUEUED: "#6c7a89",
    JobStatus.RUNNING: "#2b7bb9",
    JobStatus.RETRYING: "#d68910",
    JobStatus.SUCCEEDED: "#2e8b57",
    JobStatus.DEAD: "#c0392b",
    JobStatus.CANCELED: "#7f8c8d",
}
# The buttons of a job's page: what each does (said on its confirmation page), and the states it applies to.
JOB_BUTTONS = {
    "retry": (
        "Retry: the job goes back on the queue with a fresh budget of attempts; its open dead letters are "
        "marked retried.",
        (JobStatus.DEAD, JobStatus.CANCELED),
    ),
    "cancel": (
        "Cancel: the job will not run; its waiting delivery is taken out of the queue. It can be retried later.",
        (JobStatus.QUEUED, JobStatus.RETRYING),
    ),
}


class JobAttemptInline(StaffReadOnlyMixin, admin.TabularInline):
    model = JobAttempt
    extra = 0
    can_delete = False
    show_change_link = False
    # what the API shows of an attempt (its times to the second), plus whether its output passed validation
    fields = (
        *(f"{name}_s" if name.endswith("_at") else name for name in AttemptOutputSerializer.Meta.fields),
        "validation_passed",
    )
    readonly_fields = fields
    ordering = ("number",)
    started_at_s = timestamp_column("started_at", "started")
    finished_at_s = timestamp_column("finished_at", "finished")


@admin.register(AIJob)
class AIJobAdmin(StaffReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "status_badge",
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
    change_form_template = "admin/job_change_form.html"  # the retry / cancel buttons
    fieldsets = (
        (None, {"fields": ("id", "status_badge", "owner", "provider", "model", "priority", "created_at_s")}),
        (
            "Progress",
            {
                "fields": (
                    "attempts",
                    "max_attempts",
                    "budget_base",
                    "started_at_s",
                    "finished_at_s",
                    "next_attempt_at_s",
                    "lease_expires_at_s",
                    "error_type",
                    "error_message",
                )
            },
        ),
        ("Related", {"fields": ("dead_letters", "usage_rows", "trace")}),
        ("Request", {"fields": ("prompt_display", "options_display", "idempotency_key")}),
        ("Result", {"fields": ("result_display",)}),
        ("Transport", {"classes": ("collapse",), "fields": ("rq_job_id", "deliveries", "updated_at_s")}),
    )
    readonly_fields = (
        "id",
        "status_badge",
        "owner",
        "provider",
        "model",
        "priority",
        "created_at_s",
        "attempts",
        "max_attempts",
        "budget_base",
        "started_at_s",
        "finished_at_s",
        "next_attempt_at_s",
        "lease_expires_at_s",
        "error_type",
        "error_message",
        "dead_letters",
        "usage_rows",
        "trace",
        "prompt_display",
        "options_display",
        "idempotency_key",
        "result_display",
        "rq_job_id",
        "deliveries",
        "updated_at_s",
    )
    created_at_s = timestamp_column("created_at", "created")
    started_at_s = timestamp_column("started_at", "started")
    finished_at_s = timestamp_column("finished_at", "finished")
    next_attempt_at_s = timestamp_column("next_attempt_at", "next attempt")
    lease_expires_at_s = timestamp_column("lease_expires_at", "lease expires")
    updated_at_s = timestamp_column("updated_at", "updated")

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
        actor = Actor.of_request(request, source=AuditSource.ADMIN)
        for pk in queryset.order_by("created_at", "id").values_list("id", flat=True):
            try:
                action(job_id=pk, actor=actor)
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

    # --- a job's own page: retry / cancel, each confirmed first ---

    def get_urls(self):
        button = self.admin_site.admin_view(self.button_view)
        return [path("<path:object_id>/do/<str:action>/", button, name="jobs_aijob_button"), *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = self.get_object(request, object_id)
        buttons = [
            {"action": action, "url": reverse("admin:jobs_aijob_button", args=[job.pk, action])}
            for action, (_, statuses) in JOB_BUTTONS.items()
            if job is not None and job.status in statuses
        ]
        extra_context = {**(extra_context or {}), "job_buttons": buttons}
        return super().change_view(request, object_id, form_url, extra_context=extra_context)

    def button_view(self, request, object_id, action):
        """GET: what the button will do, and a form to do it; POST (the admin's CSRF check): do it."""
        job = self.get_object(request, object_id)
        if job is None or action not in JOB_BUTTONS:
            raise Http404(f"no job {object_id} or no button {action!r}")
        change_url = reverse("admin:jobs_aijob_change", args=[job.pk])
        if request.method == "POST":
            service = actions.job_retry if action == "retry" else actions.job_cancel
            try:
                service(
                    job_id=job.pk,
                    actor=Actor.of_request(request, source=AuditSource.ADMIN),
                    reason=request.POST.get("reason", "").strip(),
                )
            except ServiceError as exc:  # the state changed meanwhile, or the reason is refused
                self.message_user(request, f"Not done: {exc.message}", messages.WARNING)
            else:
                log.warning("admin: %s %s job %s", request.user.get_username(), action, job.pk)
                self.message_user(request, f"Job {job.pk}: {action} done.", messages.SUCCESS)
            return redirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{action.capitalize()} job {job.pk}?",
            "object": job,
            "object_url": change_url,
            "what": JOB_BUTTONS[action][0],
            "state": f"The job is {job.status} now.",
            "action": action,
        }
        return TemplateResponse(request, "admin/object_action_confirm.html", context)

    # --- display ---

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: AIJob) -> str:
        return badge(obj.status, STATUS_COLOURS.get(obj.status, "#555"))

    @admin.display(description="dead letters")
    def dead_letters(self, obj: AIJob):
        entries = list(
            DeadLetter.objects.filter(job_uuid=obj.pk).order_by("-created_at").values_list("id", "status", "error_type")
        )
        if not entries:
            return "-"
        return format_html_join(
            ", ",
            '<a href="{}">#{}</a> ({}, {})',
            ((reverse("admin:dlq_deadletter_change", args=[pk]), pk, status, error) for pk, status, error in entries),
        )

    @admin.display(description="trace")
    def trace(self, obj: AIJob):
        """The trace of the request that submitted the job and of every attempt (aipb.tracing)."""
        trace_id = tracing.trace_id_of(obj.traceparent)
        if not trace_id:
            return "-"
        url = tracing.trace_url(trace_id, settings.AIPB_TRACE_URL_TEMPLATE)
        if not url:
            return trace_id
        return format_html('<a href="{}" rel="noopener">{}</a>', url, trace_id)

    @admin.display(description="usage rows")
    def usage_rows(self, obj: AIJob):
        count = TokenUsage.objects.filter(job_id=obj.pk).count()
        if not count:
            return "none (no provider call returned usage)"
        url = reverse("admin:usage_tokenusage_changelist") + f"?job={obj.pk}"
        return format_html('<a href="{}">{} provider call{}</a>', url, count, "" if count == 1 else "s")

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
