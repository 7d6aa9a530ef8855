"""The operations page (/admin/operations/): the one page an on-call engineer opens first, and the live
dashboard (/admin/operations/dashboard/) it links to.

Operations: queue sizes per status, paused or not (with the pause / resume button), workers, open dead
letters by error type, this month's spend, and links to the job list and django-rq's dashboard. Each
section reads its own source, so a Redis outage still shows the Postgres numbers and says what failed.

Dashboard: charts over 1 h / 24 h / 7 d that redraw every few seconds without reloading the page; the page
is a frame, monitoring/static/monitoring/dashboard.js draws the charts (SVG) from
GET /api/ai/stats/timeseries, so the dashboard shows exactly what the API answers.

Staff only (the admin's own login and CSRF protection).
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
from audit.models import AuditSource
from audit.records import Actor
from dlq.selectors import dlq_stats
from jobs import queue_control
from monitoring.timeseries import WINDOWS
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


# What each disruptive action does, said on its confirmation page before anything changes.
CONFIRM = {
    "pause": "Pause all workers: no worker takes a new job until someone resumes. Attempts running now finish; "
    "submissions keep queuing.",
    "close-intake": "Close intake: every submission answers 503 (intake_closed) until someone opens it again. "
    "Workers keep draining what is queued.",
    "clear": "Clear {status}: {detail}",
}
CLEAR_DETAIL = {
    "waiting": "{count} deliveries waiting for a worker are taken out of Redis and their jobs canceled "
    "(a canceled job can be retried later).",
    "delayed": "{count} deliveries waiting out a backoff or a rate-limit wait are taken out of Redis and their "
    "jobs canceled (a canceled job can be retried later).",
    "failed": "RQ's {count} failed-job records are dropped. Job rows and dead letters stay.",
    "completed": "RQ's {count} completed-job records are dropped. Job rows stay.",
}


def _confirm(request, action: str) -> TemplateResponse:
    """The step between the button and the change: what will happen, and a second POST to do it."""
    status = request.POST.get("status", "")
    if action == "clear":
        if status not in queue_control.CLEARABLE:
            messages.error(request, f"Cannot clear {status!r}: choose one of {', '.join(queue_control.CLEARABLE)}.")
            return redirect("admin:operations")
        queue, _ = _section("queue status (Redis)", queue_control.queue_status)
        count = queue["totals"].get(status, "?") if queue else "?"
        what = CONFIRM[action].format(status=status, detail=CLEAR_DETAIL[status].format(count=count))
    else:
        what = CONFIRM[action]
    context = {
        **admin.site.each_context(request),
        "title": "Are you sure?",
        "action": action,
        "status": status,
        "reason": request.POST.get("reason", "").strip(),
        "what": what,
        "asks_reason": action in ("pause", "close-intake", "clear"),
        "operations_url": reverse("admin:operations"),
    }
    return TemplateResponse(request, "admin/operations_confirm.html", context)


def operations_view(request):
    if request.method == "POST":
        action = request.POST.get("action")
        if action in CONFIRM and request.POST.get("confirmed") != "yes":
            return _confirm(request, action)
        actor = Actor.of_request(request, source=AuditSource.ADMIN)
        try:
            if action == "pause":
                queue_control.queue_pause(actor=actor, reason=request.POST.get("reason", "").strip())
                messages.warning(request, "Queue paused: no worker takes new jobs until you resume.")
            elif action == "resume":
                queue_control.queue_resume(actor=actor)
                messages.success(request, "Queue resumed: workers take jobs again.")
            elif action == "close-intake":
                reason = request.POST.get("reason", "").strip()
                queue_control.queue_intake(open=False, actor=actor, reason=reason)
                messages.warning(request, "Intake closed: submissions answer 503 until you open it; workers drain.")
            elif action == "open-intake":
                queue_control.queue_intake(open=True, actor=actor)
                messages.success(request, "Intake open: submissions are accepted again.")
            elif action == "clear":
                status = request.POST.get("status", "")
                report = queue_control.queue_clear(
                    status=status, actor=actor, reason=request.POST.get("reason", "").strip()
                )
                messages.warning(
                    request,
                    f"Cleared {status}: {report.removed} deliveries taken out of Redis, "
                    f"{len(report.canceled)} jobs canceled.",
                )
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
            "dashboard": reverse("admin:operations-dashboard"),
        },
        "clearable": list(queue_control.CLEARABLE),
    }
    return TemplateResponse(request, "admin/operations.html", context)


DASHBOARD_REFRESH_SECONDS = 5


def dashboard_view(request):
    window = request.GET.get("window", "1h")
    context = {
        **admin.site.each_context(request),
        "title": "Live dashboard",
        "windows": list(WINDOWS),
        "window": window if window in WINDOWS else "1h",
        "api_url": reverse("stats-timeseries"),
        "refresh_seconds": DASHBOARD_REFRESH_SECONDS,
        "links": {
            "operations": reverse("admin:operations"),
            "jobs_dead": _url("admin:jobs_aijob_changelist", "?status__exact=dead"),
            "dlq_open": _url("admin:dlq_deadletter_changelist", "?status__exact=open"),
            "spend": _url("admin:usage_tokenusage_spend"),
        },
    }
    return TemplateResponse(request, "admin/dashboard.html", context)


def _with_operations(get_urls):
    def urls():
        return [
            path("operations/", admin.site.admin_view(operations_view), name="operations"),
            path("operations/dashboard/", admin.site.admin_view(dashboard_view), name="operations-dashboard"),
            *get_urls(),
        ]

    return urls


# The default site keeps its class (INSTALLED_APPS stays as it is); it only gains one URL.
admin.site.get_urls = _with_operations(admin.site.get_urls)
