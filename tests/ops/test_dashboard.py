"""e2e: the admin's live dashboard in headless Chromium, served by gunicorn as `make run` serves it (DEBUG off,
static files from WhiteNoise, the Content-Security-Policy on).

The page is read for its content, not its pixels: every chart has its axes and series, the values drawn are
the API's numbers for the rows seeded here, the page breaks no rule of its policy, and when rows are added
the charts change without the page being reloaded. Screenshots are kept in the test's tmp_path to look at.
"""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.conf import global_settings
from django.utils import timezone

from jobs.errors import ErrorType
from jobs.models import AIJob, AttemptOutcome, JobStatus
from tests.factories import AIJobFactory, JobAttemptFactory, TokenUsageFactory, UserFactory
from tests.ops.chromium import Chromium
from tests.ops.served import PASSWORD, check_page, log_in, wait_true
from tests.ops.served import browser as browser  # the fixtures, shared with test_static_and_docs
from tests.ops.served import web as web

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

DASHBOARD = "/admin/operations/dashboard/"
CHARTS = ("jobs", "latency", "queue", "wait", "errors", "spend", "running")


def finished_job(*, provider="openai", status=JobStatus.SUCCEEDED, ago: timedelta, latency_ms=800, error=""):
    at = timezone.now() - ago
    job = AIJobFactory(provider=provider, model="gpt-4o-mini", status=status, attempts=1, started_at=at, finished_at=at)
    AIJob.objects.filter(id=job.id).update(created_at=at - timedelta(seconds=2))
    JobAttemptFactory(
        job=job,
        started_at=at - timedelta(milliseconds=latency_ms),
        latency_ms=latency_ms,
        outcome=AttemptOutcome.FAILED if error else AttemptOutcome.SUCCEEDED,
        error_type=error,
    )
    TokenUsageFactory(job=job, owner=job.owner, cost=Decimal("0.0125"), created_at=at)
    return job


def page_state(browser: Chromium) -> dict:
    """What the page shows: per chart, its series' drawn values and legend, its axis labels; the tiles."""
    return browser.evaluate(
        """(() => {
          const root = document.getElementById('dashboard');
          const charts = {};
          for (const section of document.querySelectorAll('section.dash-chart')) {
            charts[section.dataset.chart] = {
              title: section.querySelector('h3').textContent,
              yTicks: Array.from(section.querySelectorAll('.y-axis text.tick')).map(t => t.textContent),
              xTicks: Array.from(section.querySelectorAll('.x-axis text.tick')).map(t => t.textContent),
              series: Object.fromEntries(Array.from(section.querySelectorAll('g.series')).map(g => [
                g.dataset.series, g.querySelector('path').dataset.values.split(',')])),
              legend: Object.fromEntries(Array.from(section.querySelectorAll('ul.legend li[data-series]')).map(li => [
                li.dataset.series, li.querySelector('strong.total').textContent])),
              paths: section.querySelectorAll('g.series path').length,
            };
          }
          const tiles = Object.fromEntries(Array.from(document.querySelectorAll('.dash-tile strong')).map(
            s => [s.id, s.textContent]));
          return {updates: Number(root.dataset.updates || 0), start: root.dataset.start,
                  window: root.dataset.renderedWindow, charts, tiles,
                  status: document.getElementById('dash-status').textContent};
        })()"""
    )


def api_answer(browser: Chromium, window: str) -> dict:
    """The API's answer, fetched by the page's own session (what the dashboard itself asks for)."""
    browser.evaluate(
        "window.__api = undefined; fetch('/api/ai/stats/timeseries?window=" + window + "', "
        "{credentials: 'same-origin'}).then(r => r.json()).then(d => { window.__api = d; }); true"
    )
    wait_true(browser, "window.__api !== undefined", "the API's answer")
    return browser.evaluate("window.__api")


def shown(values: list) -> list[str]:
    return ["" if v is None else (str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)) for v in values]


def consistent(browser: Chromium, window: str) -> tuple[dict, dict]:
    """The page and the API read with the same bucket alignment (a minute may turn between the two reads)."""
    for _ in range(3):
        state = page_state(browser)
        body = api_answer(browser, window)
        if state["start"] == body["start"].replace("+00:00", "Z") and state["window"] == window:
            return state, body
        updates = state["updates"]
        wait_true(browser, f"Number(document.getElementById('dashboard').dataset.updates) > {updates}", "a refresh")
    raise AssertionError("the page and the API never agreed on the window's start")


def test_the_live_dashboard_draws_the_apis_numbers_and_follows_new_rows_without_a_reload(
    web, browser, settings, tmp_path
):
    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS  # gunicorn checks with the production hashers
    UserFactory(username="dash-ops", is_staff=True, is_superuser=True, password=PASSWORD)
    finished_job(ago=timedelta(minutes=20), latency_ms=400)
    finished_job(ago=timedelta(minutes=3), latency_ms=1600)
    finished_job(status=JobStatus.DEAD, ago=timedelta(minutes=2), error=ErrorType.RATE_LIMIT)
    finished_job(provider="anthropic", ago=timedelta(minutes=1), latency_ms=900)

    log_in(browser, web.origin, "dash-ops")
    assert f'href="{DASHBOARD}"' in browser.html()  # the admin index links it
    browser.navigate(f"{web.origin}/admin/operations/")
    assert f'href="{DASHBOARD}"' in browser.html()  # and so does the operations page
    browser.navigate(f"{web.origin}{DASHBOARD}")
    wait_true(browser, "Number(document.getElementById('dashboard').dataset.updates) >= 1", "the first drawing")
    browser.evaluate("window.__sameDocument = true")
    check_page(browser, web.origin)  # styled, nothing from elsewhere, no CSP violation (the script is a file)
    assert browser.evaluate("document.querySelectorAll('script:not([src])').length") == 0

    state, body = consistent(browser, "1h")
    assert set(state["charts"]) == set(CHARTS)
    for name, chart in state["charts"].items():
        assert len(chart["yTicks"]) == 3 and chart["yTicks"][0] == "0", name  # 0, half, top
        assert len(chart["xTicks"]) >= 5, name  # UTC times along the bottom
        assert "(1-minute buckets)" in chart["title"], name
    jobs = state["charts"]["jobs"]
    assert jobs["series"] == {
        f"{provider} {status}": shown(values)
        for status, by_provider in body["jobs"].items()
        for provider, values in by_provider.items()
    }
    assert jobs["legend"]["openai succeeded"] == "2" and jobs["legend"]["openai dead"] == "1"
    assert jobs["legend"]["anthropic succeeded"] == "1"
    assert len(jobs["series"]["openai succeeded"]) == 60
    assert state["charts"]["errors"]["series"] == {"RATE_LIMIT": shown(body["errors"]["RATE_LIMIT"])}
    assert state["charts"]["latency"]["series"]["p95"] == shown(body["latency_ms"]["p95"])
    assert state["charts"]["spend"]["series"]["spend"] == body["spend_usd"]
    assert state["charts"]["spend"]["legend"]["spend"] == body["totals"]["spend_usd"] == "0.050000"
    assert state["charts"]["queue"]["series"]["submitted"] == shown(body["queue"]["submitted"])
    assert state["charts"]["running"]["series"]["running"] == shown(body["running"])
    assert state["tiles"]["tile-succeeded"] == "3" and state["tiles"]["tile-dead"] == "1"
    assert state["tiles"]["tile-spend"] == "0.050000"
    assert state["status"].startswith("Updated ")
    browser.screenshot(tmp_path / "dashboard-1h.png")

    # new rows: the next refresh draws them, in the same document
    finished_job(ago=timedelta(seconds=5), latency_ms=700)
    finished_job(provider="anthropic", status=JobStatus.DEAD, ago=timedelta(seconds=3), error=ErrorType.TIMEOUT)
    wait_true(browser, "document.getElementById('tile-succeeded').textContent === '4'", "the refresh", timeout=20)
    state, body = consistent(browser, "1h")
    assert browser.evaluate("window.__sameDocument === true")  # not reloaded
    assert state["charts"]["jobs"]["legend"]["openai succeeded"] == "3"
    assert state["charts"]["jobs"]["legend"]["anthropic dead"] == "1"
    assert set(state["charts"]["errors"]["series"]) == {"RATE_LIMIT", "TIMEOUT"}
    assert state["charts"]["jobs"]["series"]["anthropic dead"] == shown(body["jobs"]["dead"]["anthropic"])
    assert state["tiles"]["tile-spend"] == body["totals"]["spend_usd"] == "0.075000"
    browser.screenshot(tmp_path / "dashboard-1h-updated.png")

    # another window: drawn in place, the address follows
    browser.evaluate("document.querySelector('a.dash-window[data-window=\"24h\"]').click(); true")
    wait_true(browser, "document.getElementById('dashboard').dataset.renderedWindow === '24h'", "the 24 h window")
    state, body = consistent(browser, "24h")
    assert browser.evaluate("window.__sameDocument === true")
    assert browser.evaluate("location.search") == "?window=24h"
    assert len(state["charts"]["jobs"]["series"]["openai succeeded"]) == 96
    assert "(15-minute buckets)" in state["charts"]["jobs"]["title"]
    assert state["charts"]["jobs"]["legend"]["openai succeeded"] == "3"
    assert state["tiles"]["tile-succeeded"] == str(body["totals"]["succeeded"]) == "4"
    check_page(browser, web.origin)
    browser.screenshot(tmp_path / "dashboard-24h.png")
    assert all((tmp_path / name).stat().st_size > 10_000 for name in ("dashboard-1h.png", "dashboard-24h.png"))


def test_the_dashboard_says_when_a_refresh_fails_and_keeps_the_last_drawing(web, browser, settings):
    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS
    UserFactory(username="dash-ops", is_staff=True, is_superuser=True, password=PASSWORD)
    log_in(browser, web.origin, "dash-ops")
    browser.navigate(f"{web.origin}{DASHBOARD}?window=7d")
    wait_true(browser, "document.getElementById('dashboard').dataset.renderedWindow === '7d'", "the 7 d window")
    assert len(page_state(browser)["charts"]["running"]["series"]["running"]) == 168
    # the session ends (logged out elsewhere): the API answers 403 and the page says so, charts kept
    browser.send("Network.clearBrowserCookies")
    wait_true(browser, "document.getElementById('dash-status').classList.contains('error')", "the failure notice")
    state = page_state(browser)
    assert "Refresh failed" in state["status"] and len(state["charts"]) == len(CHARTS)
    assert json.dumps(state["charts"]["running"]["series"]).count('"0"') == 168
