"""The operations page (/admin/operations/): the one page an on-call engineer opens first.

Queue sizes per status, paused or not (with the pause / resume button), workers, open dead
letters by error type, this month's spend, and links to the job list and django-rq's dashboard.
Staff only (the admin's own login and CSRF protection). Each section reads its own source, so a
Redis outage still shows the Postgres numbers and says what failed.
"""

from __future__ import annotations

import logging

from django.contrib import admin, messages
from django.db import DatabaseError
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from redis.exceptions import RedisError

from aipb.exceptions import ServiceError
from dlq.selectors import dlq_stats
from jobs import queue_control
from usage.pricing import price_data_info
from usage.reports import month_to_date_summary

log = logging.getLogger(__name__)


def _section(name: str, read):
    try:
        return read(), ""
    except (RedisError, DatabaseError, ServiceError) as exc:
        log.warning("operations page: %s unavailable: %s", name, exc)
        return None, f"{name} unavailable: {exc.__class__.__name__}: {exc}"


def _url(name: str, query: str = "") -> str:
    try:
        return reverse(name) + query
    except NoReverseMatch:
        return ""


def operations_view(request):
    if request.method == "POST":
        action = request.POST.get("action")
        try:
            if action == "pause":
                queue_control.queue_pause(by=request.user.get_username(), reason=request.POST.get("reason", "").strip())
                messages.warning(request, "Queue paused: no worker takes new jobs until you resume.")
            elif action == "resume":
                queue_control.queue_resume(by=request.user.get_username())
                messages.success(request, "Queue resumed: workers take jobs again.")
            elif action == "close-intake":
                reason = request.POST.get("reason", "").strip()
                queue_control.queue_intake(open=False, by=request.user.get_username(), reason=reason)
                messages.warning(request, "Intake closed: submissions answer 503 until you open it; workers drain.")
            elif action == "open-intake":
                queue_control.queue_intake(open=True, by=request.user.get_username())
                messages.success(request, "Intake open: submissions are accepted again.")
            else:
                messages.error(request, "Unknown action.")
        except (RedisError, ServiceError) as exc:
            messages.error(request, f"Could not {action}: {exc}")
        return redirect("admin:operations")

    queue, queue_error = _section("queue status (Redis)", queue_control.queue_status)
    dlq, dlq_error = _section("dead-letter stats", dlq_stats)
    spend, spend_error = _section("usage", month_to_date_summary)
    price_data, price_data_error = _section("price data", price_data_info)
    context = {
        **admin.site.each_context(request),
        "title": "Operations",
        "queue": queue,
        "queue_error": queue_error,
        "dlq": dlq,
        "dlq_error": dlq_error,
        "spend": spend,
        "spend_error": spend_error,
        "price_data": price_data,
        "price_data_error": price_data_error,
        "links": {
            "jobs": _url("admin:jobs_aijob_changelist"),
            "jobs_running": _url("admin:jobs_aijob_changelist", "?status__exact=running"),
            "jobs_dead": _url("admin:jobs_aijob_changelist", "?status__exact=dead"),
            "dlq_open": _url("admin:dlq_deadletter_changelist", "?status__exact=open"),
            "django_rq": _url("django_rq:home"),
        },
    }
    return TemplateResponse(request, "admin/operations.html", context)


def _with_operations(get_urls):
    def urls():
        return [path("operations/", admin.site.admin_view(operations_view), name="operations"), *get_urls()]

    return urls


# The default site keeps its class (INSTALLED_APPS stays as it is); it only gains one URL.
admin.site.get_urls = _with_operations(admin.site.get_urls)
