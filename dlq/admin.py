"""DeadLetter in the Django admin: filters, search by job id or message, retry / discard, stats on top; on an
entry's own page retry / discard buttons (each with a confirmation step) and links to its job and usage rows.

Like the API, the dead-letter queue is for staff: every active staff user may see it and act on it.
Entries are never edited or deleted by hand; retention and the two actions are the only writes.
"""

from __future__ import annotations

import json
import uuid

from django.contrib import admin, messages
from django.db.models import Q
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html, format_html_join

from aipb.admin_mixins import ObjectButtonsMixin, StaffReadOnlyMixin, badge, timestamp, timestamp_column
from aipb.exceptions import ServiceError
from audit.models import AuditSource
from audit.records import Actor
from dlq import selectors, services
from dlq.models import DeadLetter, DeadLetterStatus
from usage.models import TokenUsage

ATTEMPT_COLUMNS = (
    ("number", "#"),
    ("outcome", "outcome"),
    ("error_type", "error type"),
    ("error_message", "message"),
    ("started_at", "started"),
    ("finished_at", "finished"),
    ("latency_ms", "latency ms"),
    ("prompt_tokens", "prompt tok"),
    ("completion_tokens", "completion tok"),
    ("provider_request_id", "request id"),
)


STATUS_COLOURS = {
    DeadLetterStatus.OPEN: "#c0392b",
    DeadLetterStatus.RETRIED: "#2b7bb9",
    DeadLetterStatus.DISCARDED: "#7f8c8d",
}
# The buttons of an open entry's page, and what each does (said on its confirmation page).
ENTRY_BUTTONS = {
    "retry": "Retry: the job goes back on the queue with a fresh budget of attempts; this entry becomes retried.",
    "discard": "Discard: the entry is closed and the job stays dead.",
}


@admin.register(DeadLetter)
class DeadLetterAdmin(ObjectButtonsMixin, StaffReadOnlyMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "job_uuid",
        "status_badge",
        "error_type",
        "retryable",
        "attempts",
        "provider",
        "model",
        "short_message",
        "created_at_s",
        "resolved_at_s",
    )
    list_display_links = ("id", "job_uuid")
    list_filter = ("status", "error_type", "provider", "retryable")
    search_fields = ("error_message",)
    search_help_text = "A job id (UUID), a dead letter id, or words from the error message."
    ordering = ("-created_at", "-id")
    list_per_page = 50
    show_full_result_count = False  # the stats box has the counts; no second COUNT(*) per page
    actions = ("retry_selected", "discard_selected")
    fields = (
        "id",
        "job_link",
        "usage_rows",
        "status_badge",
        "error_type",
        "retryable",
        "attempts",
        "provider",
        "model",
        "error_message",
        "created_at_s",
        "resolved_at_s",
        "job_input",
        "attempt_history",
        "snapshot",
    )
    readonly_fields = fields
    created_at_s = timestamp_column("created_at", "created")
    resolved_at_s = timestamp_column("resolved_at", "resolved")

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        if request.resolver_match and request.resolver_match.url_name.endswith("changelist"):
            qs = qs.defer("payload")
        return qs

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        try:
            job_uuid = uuid.UUID(term)
        except ValueError:
            pass
        else:
            return queryset.filter(job_uuid=job_uuid), False
        if term.isdigit() and len(term) <= 18:
            return queryset.filter(Q(id=int(term)) | Q(error_message__icontains=term)), False
        return super().get_search_results(request, queryset, search_term)

    def changelist_view(self, request, extra_context=None):
        # the admin site has already turned away anyone who is not active staff
        return super().changelist_view(
            request, extra_context={**(extra_context or {}), "dlq_stats": selectors.dlq_stats()}
        )

    # --- actions ---

    def _apply(self, request, queryset, verb: str, action) -> None:
        done, refused = 0, []
        actor = Actor.of_request(request, source=AuditSource.ADMIN)
        for pk in queryset.order_by("id").values_list("id", flat=True):
            try:
                action(entry_id=pk, actor=actor)
                done += 1
            except ServiceError as exc:
                refused.append(exc.message)
        if done:
            self.message_user(
                request, f"{verb.capitalize()} {done} dead letter{'s' if done != 1 else ''}.", messages.SUCCESS
            )
        for reason in refused[:10]:
            self.message_user(request, reason, messages.WARNING)
        if len(refused) > 10:
            self.message_user(request, f"… and {len(refused) - 10} more not {verb}.", messages.WARNING)

    @admin.action(description="Retry the selected jobs (fresh attempt budget)")
    def retry_selected(self, request, queryset):
        self._apply(request, queryset, "retried", services.dlq_retry)

    @admin.action(description="Discard the selected dead letters")
    def discard_selected(self, request, queryset):
        self._apply(request, queryset, "discarded", services.dlq_discard)

    # --- an entry's own page: retry / discard, each confirmed first (ObjectButtonsMixin) ---

    button_noun = "dead letter"
    button_context_name = "entry_buttons"
    object_buttons = ENTRY_BUTTONS

    def object_button_actions(self, obj: DeadLetter) -> list[str]:
        if obj.status != DeadLetterStatus.OPEN:
            return []
        # a deleted job cannot be retried
        return [action for action in ENTRY_BUTTONS if action != "retry" or obj.job_id is not None]

    def object_button_state(self, obj: DeadLetter) -> str:
        return (
            f"The entry is {obj.status}; its job {obj.job_uuid} died with {obj.error_type} "
            f"at {timestamp(obj.created_at)}."
        )

    def object_button_perform(self, request, obj: DeadLetter, action: str, reason: str) -> None:
        service = services.dlq_retry if action == "retry" else services.dlq_discard
        service(entry_id=obj.pk, actor=Actor.of_request(request, source=AuditSource.ADMIN), reason=reason)

    # --- display ---

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: DeadLetter) -> str:
        return badge(obj.status, STATUS_COLOURS.get(obj.status, "#555"))

    @admin.display(description="usage rows")
    def usage_rows(self, obj: DeadLetter):
        if obj.job_id is None:
            return "-"
        count = TokenUsage.objects.filter(job_id=obj.job_id).count()
        if not count:
            return "none (no provider call returned usage)"
        url = reverse("admin:usage_tokenusage_changelist") + f"?job={obj.job_id}"
        return format_html('<a href="{}">{} provider call{} of the job</a>', url, count, "" if count == 1 else "s")

    @admin.display(description="message")
    def short_message(self, obj: DeadLetter) -> str:
        text = " ".join(obj.error_message.split())
        return text if len(text) <= 80 else text[:79] + "…"

    @admin.display(description="job")
    def job_link(self, obj: DeadLetter):
        if obj.job_id is None:
            return format_html("{} <strong>(deleted)</strong>", obj.job_uuid)
        try:
            url = reverse("admin:jobs_aijob_change", args=[obj.job_id])
        except NoReverseMatch:
            return str(obj.job_uuid)
        return format_html('<a href="{}">{}</a>', url, obj.job_uuid)

    @admin.display(description="job input at death")
    def job_input(self, obj: DeadLetter):
        job = (obj.payload or {}).get("job") or {}
        if not job:
            return "-"
        rows = format_html_join(
            "",
            "<tr><th>{}</th><td><pre style='white-space: pre-wrap; margin: 0'>{}</pre></td></tr>",
            ((key, _pretty(value)) for key, value in job.items()),
        )
        return format_html("<table>{}</table>", rows)

    @admin.display(description="attempt history")
    def attempt_history(self, obj: DeadLetter):
        history = (obj.payload or {}).get("attempt_history") or []
        if not history:
            return "-"
        head = format_html_join("", "<th>{}</th>", ((label,) for _, label in ATTEMPT_COLUMNS))
        body = format_html_join(
            "",
            "<tr>{}</tr>",
            (
                (format_html_join("", "<td>{}</td>", ((_cell(attempt.get(key)),) for key, _ in ATTEMPT_COLUMNS)),)
                for attempt in history
            ),
        )
        return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)

    @admin.display(description="snapshot (JSON)")
    def snapshot(self, obj: DeadLetter):
        return format_html("<pre style='white-space: pre-wrap'>{}</pre>", json.dumps(obj.payload, indent=2))


def _pretty(value: object) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, indent=2)
    return "" if value is None else str(value)


def _cell(value: object) -> str:
    return "-" if value in (None, "") else str(value)
