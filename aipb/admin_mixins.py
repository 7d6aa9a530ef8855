"""Admin building blocks shared by the apps."""

from __future__ import annotations

from datetime import UTC, datetime

from django.contrib import admin, messages
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from aipb.exceptions import ServiceError


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


# --- buttons on an object's own page, each with a confirmation step ---


class ObjectButtonsMixin:
    """Buttons on a change page (`<object>/do/<action>/`): GET shows what the action will do and a form, POST (under
    the admin's CSRF check) calls the service. The ModelAdmin says which actions an object offers, what each does,
    and how to perform one; a refused action (the state changed meanwhile) is a warning, not an error page."""

    button_noun = "object"  # in titles and messages: "Retry job …?"
    button_context_name = "object_buttons"  # the change form template's variable
    object_buttons: dict[str, str] = {}  # action -> what it does, said on its confirmation page

    def object_button_actions(self, obj) -> list[str]:
        """The buttons shown for obj in its state (a known action posted in another state reaches the service,
        which refuses it with a message)."""
        raise NotImplementedError

    def object_button_state(self, obj) -> str:
        raise NotImplementedError

    def object_button_perform(self, request, obj, action: str, reason: str) -> None:
        """Call the service; raise ServiceError when it refuses."""
        raise NotImplementedError

    def _button_url_name(self) -> str:
        return f"{self.opts.app_label}_{self.opts.model_name}_button"

    def get_urls(self):
        button = self.admin_site.admin_view(self.button_view)
        return [path("<path:object_id>/do/<str:action>/", button, name=self._button_url_name()), *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, object_id)
        buttons = [
            {"action": action, "url": reverse(f"admin:{self._button_url_name()}", args=[obj.pk, action])}
            for action in (self.object_button_actions(obj) if obj is not None else ())
        ]
        extra_context = {**(extra_context or {}), self.button_context_name: buttons}
        return super().change_view(request, object_id, form_url, extra_context=extra_context)

    def button_view(self, request, object_id, action):
        obj = self.get_object(request, object_id)
        if obj is None or action not in self.object_buttons:
            raise Http404(f"no {self.button_noun} {object_id} or no button {action!r} for it")
        change_url = reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[obj.pk])
        if request.method == "POST":
            try:
                self.object_button_perform(request, obj, action, request.POST.get("reason", "").strip())
            except ServiceError as exc:  # the state changed meanwhile, or the reason is refused
                self.message_user(request, f"Not done: {exc.message}", messages.WARNING)
            else:
                self.message_user(
                    request, f"{self.button_noun.capitalize()} {obj.pk}: {action} done.", messages.SUCCESS
                )
            return redirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{action.capitalize()} {self.button_noun} {obj.pk}?",
            "object": obj,
            "object_url": change_url,
            "what": self.object_buttons[action],
            "state": self.object_button_state(obj),
            "action": action,
        }
        return TemplateResponse(request, "admin/object_action_confirm.html", context)
