"""The audit trail in the admin: every active staff user may read it; nobody adds, edits or deletes a row."""

from __future__ import annotations

import json

from django.contrib import admin
from django.utils.html import format_html

from aipb.admin_mixins import StaffReadOnlyMixin
from audit.models import AuditEntry

_PRE = "<pre style='white-space: pre-wrap; margin: 0; max-height: 40em; overflow: auto'>{}</pre>"


@admin.register(AuditEntry)
class AuditEntryAdmin(StaffReadOnlyMixin, admin.ModelAdmin):
    list_display = ("at", "actor", "source", "action", "target_type", "target_id", "reason_excerpt")
    list_filter = ("action", "source", "target_type", "at")
    search_fields = ("actor", "target_id", "reason")
    search_help_text = "An actor's name, a target's id (a job's UUID, a dead letter's number) or words of the reason."
    date_hierarchy = "at"
    ordering = ("-at", "-id")
    list_per_page = 50
    show_full_result_count = False
    actions = None  # not even Django's "delete selected": the trail is kept
    fields = ("at", "actor", "source", "action", "target_type", "target_id", "reason", "details_display")
    readonly_fields = fields

    @admin.display(description="reason")
    def reason_excerpt(self, obj: AuditEntry) -> str:
        text = " ".join(obj.reason.split())
        return text if len(text) <= 60 else text[:59] + "…"

    @admin.display(description="details (JSON)")
    def details_display(self, obj: AuditEntry):
        return format_html(_PRE, json.dumps(obj.details, indent=2, sort_keys=True, ensure_ascii=False))
