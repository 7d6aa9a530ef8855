"""Admin building blocks shared by the apps."""

from __future__ import annotations

from datetime import UTC, datetime

from django.contrib import admin
from django.utils.html import format_html


def is_active_staff(request) -> bool:
    return bool(request.user.is_active and request.user.is_staff)


class StaffReadOnlyMixin:
    """Any active staff user may look (like the staff-only API); rows change only through the services,
    via admin actions, never through Django's own add/change/delete views."""

    def has_module_permission(self, request):
        return is_active_staff(request)

    def has_view_permission(self, request, obj=None):
        return is_active_staff(request)

    def has_add_permission(self, request, *args):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


# --- display: timestamps to the second, states in colour ---

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S UTC"


def timestamp(value: datetime | None) -> str:
    """The admin's own format has minutes only; two events of one minute (a retry, a race) need seconds."""
    return "-" if value is None else value.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def timestamp_column(field: str, description: str | None = None):
    """A ModelAdmin method showing `field` with seconds (list column or read-only field), sortable by it."""

    @admin.display(description=description or field.replace("_", " "), ordering=field)
    def show(self, obj) -> str:
        return timestamp(getattr(obj, field))

    return show


def badge(text: str, colour: str) -> str:
    return format_html(
        '<span class="aipb-badge" style="background: {}; color: #fff; padding: 1px 7px; border-radius: 9px; '
        'font-weight: bold; white-space: nowrap">{}</span>',
        colour,
        text,
    )
