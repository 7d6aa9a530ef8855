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
from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from aipb import tracing
from aipb.admin_mixins import ObjectButtonsMixin, StaffReadOnlyMixin, badge, timestamp_column
from aipb.commands import age
from aipb.exceptions import NotFound, ServiceError
from audit.models import AuditSource
from audit.records import Actor
from dlq.models import DeadLetter
from jobs import actions, batch_selectors, batches
from jobs.models import UNFINISHED_STATUSES, AIJob, Batch, BatchStatus, JobAttempt, JobStatus
from jobs.serializers import AttemptOutputSerializer
from usage.models import TokenUsage
from usage.reports import money

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
class AIJobAdmin(ObjectButtonsMixin, StaffReadOnlyMixin, admin.ModelAdmin):
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

    # --- a job's own page: retry / cancel, each confirmed first (ObjectButtonsMixin) ---

    button_noun = "job"
    button_context_name = "job_buttons"
    object_buttons = {action: what for action, (what, _) in JOB_BUTTONS.items()}

    def object_button_actions(self, obj: AIJob) -> list[str]:
        return [action for action, (_, statuses) in JOB_BUTTONS.items() if obj.status in statuses]

    def object_button_state(self, obj: AIJob) -> str:
        return f"The job is {obj.status} now."

    def object_button_perform(self, request, obj: AIJob, action: str, reason: str) -> None:
        service = actions.job_retry if action == "retry" else actions.job_cancel
        service(job_id=obj.pk, actor=Actor.of_request(request, source=AuditSource.ADMIN), reason=reason)
        log.warning("admin: %s %s job %s", request.user.get_username(), action, obj.pk)

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


# --- batches ---

BATCH_COLOURS = {BatchStatus.RUNNING: "#2b7bb9", BatchStatus.COMPLETED: "#2e8b57", BatchStatus.CANCELED: "#7f8c8d"}


def _jobs_of(status: str | tuple[str, ...]) -> Subquery:
    """How many of the row's jobs are in `status`: a correlated count on aijob_batch_status, run for the rows
    of the page only."""
    statuses = (status,) if isinstance(status, str) else status
    jobs = AIJob.objects.filter(batch=OuterRef("pk"), status__in=statuses).order_by().values("batch")
    return Coalesce(Subquery(jobs.annotate(n=Count("*")).values("n")), 0)


@admin.register(Batch)
class BatchAdmin(StaffReadOnlyMixin, admin.ModelAdmin):
    """Batches with their jobs' counts; a batch's own page adds its cost and a link to its jobs. Cancel goes
    through jobs.batches.batch_cancel, audited for a batch of someone else."""

    list_display = (
        "id",
        "status_badge",
        "total",
        "n_succeeded",
        "n_dead",
        "n_canceled",
        "n_unfinished",
        "age",
        "owner",
        "jobs_link",
    )
    list_filter = ("status", "created_at")
    list_select_related = ("owner",)
    search_fields = ("owner__username",)
    search_help_text = "A batch id or an owner's username."
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-id")
    list_per_page = 50
    show_full_result_count = False
    actions = ("cancel_selected",)
    fields = (
        "id",
        "status_badge",
        "owner",
        "total",
        "counts_display",
        "cost_display",
        "created_at_s",
        "finished_at_s",
        "metadata_display",
        "jobs_link",
        "idempotency_key",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                n_succeeded=_jobs_of(JobStatus.SUCCEEDED),
                n_dead=_jobs_of(JobStatus.DEAD),
                n_canceled=_jobs_of(JobStatus.CANCELED),
                n_unfinished=_jobs_of(UNFINISHED_STATUSES),
            )
        )

    def get_search_results(self, request, queryset, search_term):
        try:
            return queryset.filter(id=uuid.UUID(search_term.strip())), False
        except ValueError:
            return super().get_search_results(request, queryset, search_term)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Batch) -> str:
        return badge(obj.status, BATCH_COLOURS.get(obj.status, "#555"))

    @admin.display(description="succeeded", ordering="n_succeeded")
    def n_succeeded(self, obj: Batch) -> int:
        return obj.n_succeeded

    @admin.display(description="dead", ordering="n_dead")
    def n_dead(self, obj: Batch) -> int:
        return obj.n_dead

    @admin.display(description="canceled", ordering="n_canceled")
    def n_canceled(self, obj: Batch) -> int:
        return obj.n_canceled

    @admin.display(description="unfinished", ordering="n_unfinished")
    def n_unfinished(self, obj: Batch) -> int:
        return obj.n_unfinished

    @admin.display(description="age", ordering="created_at")
    def age(self, obj: Batch) -> str:
        return age(obj.created_at)

    created_at_s = timestamp_column("created_at", "created")
    finished_at_s = timestamp_column("finished_at", "finished")

    @admin.display(description="jobs")
    def jobs_link(self, obj: Batch) -> str:
        url = reverse("admin:jobs_aijob_changelist") + f"?batch__id__exact={obj.id}"
        return format_html('<a href="{}">{} jobs</a>', url, obj.total)

    @admin.display(description="jobs by status")
    def counts_display(self, obj: Batch) -> str:
        counts = batch_selectors.batch_counts(batch_ids=[obj.id])[obj.id]
        return format_html_join(
            " ", "{}", ((badge(f"{n} {status}", STATUS_COLOURS[status]),) for status, n in counts.items() if n)
        )

    @admin.display(description="cost (USD)")
    def cost_display(self, obj: Batch) -> str:
        return money(batch_selectors.batch_costs(batch_ids=[obj.id])[obj.id])  # not batch_views: counts are above

    @admin.display(description="metadata")
    def metadata_display(self, obj: Batch) -> str:
        return format_html(_PRE, json.dumps(obj.metadata, indent=2, ensure_ascii=False))

    @admin.action(description="Cancel the selected batches (their jobs that have not started)")
    def cancel_selected(self, request, queryset):
        done, refused = 0, []
        actor = Actor.of_request(request, source=AuditSource.ADMIN)
        for pk in queryset.order_by("created_at", "id").values_list("id", flat=True):
            try:
                batches.batch_cancel(batch_id=pk, actor=actor)
                done += 1
            except ServiceError as exc:
                refused.append(exc.message)
        if done:
            self.message_user(request, f"canceled {done} batch{'es' if done != 1 else ''}.", messages.SUCCESS)
        for reason in refused[:10]:
            self.message_user(request, reason, messages.WARNING)
