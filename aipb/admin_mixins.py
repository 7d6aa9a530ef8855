"""Admin building blocks shared by the apps."""

from __future__ import annotations


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
