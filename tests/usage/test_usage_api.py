"""The usage endpoints: permissions, formats, and bad input refused before anything is computed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.http import StreamingHttpResponse

from usage import reports
from usage.models import ModelPrice

from .conftest import UsageQueries, assert_breakdowns_add_up, csv_totals, record, utc

pytestmark = pytest.mark.usefixtures("prices")

REPORT = "/api/ai/usage/report"
CURRENT_MONTH = "/api/ai/usage/current-month"
LAST_N_DAYS = "/api/ai/usage/last-n-days"
PRICES = "/api/ai/usage/prices"
FEB = {"start": "2025-02-01", "end": "2025-02-28"}


@pytest.fixture
def usage_rows(user, other_user, staff_user):
    record(user, prompt=1_000_000, at=utc(2025, 2, 3))  # alice 1.00
    record(other_user, model="sim-large", prompt=1_000_000, at=utc(2025, 2, 4))  # bob 10.00
    record(staff_user, completion=1_000_000, at=utc(2025, 2, 5))  # ops 2.00


def test_staff_see_everyone_and_may_filter_by_user(staff_api, usage_rows):
    body = staff_api.get(REPORT, FEB).json()
    assert set(body["by_user"]) == {"alice", "bob", "ops"} and body["total_estimated_cost"] == "13.000000"
    bob = staff_api.get(REPORT, {**FEB, "user": "bob"}).json()
    assert list(bob["by_user"]) == ["bob"] and bob["total_estimated_cost"] == "10.000000"
    assert [u["user"] for u in body["top_users"]] == ["bob", "ops", "alice"]
    assert [u["user"] for u in staff_api.get(REPORT, {**FEB, "top": 1}).json()["top_users"]] == ["bob"]


def test_a_user_sees_only_their_own_usage_and_the_user_filter_is_ignored(api, usage_rows):
    own = api.get(REPORT, FEB).json()
    assert list(own["by_user"]) == ["alice"] and own["requests"] == 1 and own["total_estimated_cost"] == "1.000000"
    assert api.get(REPORT, {**FEB, "user": "bob"}).json() == own
    assert api.get(REPORT, {**FEB, "user": "nobody-at-all"}).json() == own
    text = b"".join(api.get(REPORT, {**FEB, "format": "csv", "user": "bob"}).streaming_content).decode()
    assert [line.split(",")[3] for line in text.splitlines()[1:]] == ["alice"]


@pytest.mark.parametrize("url", [REPORT, CURRENT_MONTH, LAST_N_DAYS, PRICES])
def test_anonymous_requests_are_401(anon_api, url):
    response = anon_api.get(url)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "not_authenticated"


def test_prices_are_staff_only(api, staff_api):
    assert api.get(PRICES).status_code == 403
    body = staff_api.get(PRICES).json()
    gpt4o = next(p for p in body["prices"] if p["model"] == "gpt-4o")
    assert gpt4o == {
        "provider": "openai", "model": "gpt-4o", "input_per_million": "2.500000", "output_per_million": "10.000000",
        "cached_input_per_million": "1.250000", "cache_write_per_million": None,
        "effective_from": "2024-01-01T00:00:00+00:00",
    }  # fmt: skip
    assert {"provider": "google", "model": "gemma-4-31b-it"} in body["unpriced"]
    history = staff_api.get(PRICES, {"history": "true"}).json()["prices"]
    # superseded rows too: the seed's gemini-1.5-pro before the price data's, o3 before its 2025-06-10 cut
    assert len(history) == ModelPrice.objects.count() > len(body["prices"])
    assert staff_api.get(PRICES, {"history": "maybe"}).status_code == 400


def test_csv_streams_by_format_or_accept_header_and_equals_the_json(staff_api, usage_rows):
    body = staff_api.get(REPORT, FEB).json()
    response = staff_api.get(REPORT, {**FEB, "format": "csv"})
    assert response.status_code == 200 and isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="usage-2025-02-01-2025-02-28.csv"'
    text = b"".join(response.streaming_content).decode()
    assert text.startswith("date,provider,model,user,requests,")
    assert csv_totals(text) == {key: body[key] for key in ("by_date", "by_provider", "by_model", "by_user")}
    by_accept = staff_api.get(REPORT, FEB, HTTP_ACCEPT="text/csv")
    assert b"".join(by_accept.streaming_content).decode() == text
    assert staff_api.get(REPORT, {**FEB, "format": "json"}, HTTP_ACCEPT="text/csv").json() == body
    assert staff_api.get(REPORT, FEB, HTTP_ACCEPT="application/json, text/csv").json() == body


def test_current_month_and_last_n_days_cover_the_right_utc_days(staff_api, user):
    today = reports.utc_today()
    midnight = utc(today.year, today.month, today.day)
    first = today.replace(day=1)
    week_start, month_start = midnight - timedelta(days=6), utc(first.year, first.month, 1)
    rows = {
        1: midnight,  # today's first instant
        10: week_start,  # the 7th day back, included in days=7
        100: week_start - timedelta(microseconds=1),  # just outside days=7
        1_000: month_start - timedelta(microseconds=1),  # last month's last instant
    }
    for prompt, at in rows.items():
        record(user, prompt=prompt, at=at)

    def since(start):
        # Early in a month the 7-day window reaches into last month: what falls in it depends on the date
        return sum(prompt for prompt, at in rows.items() if at >= start)

    week = staff_api.get(LAST_N_DAYS, {"days": 7}).json()
    assert (week["start"], week["end"]) == ((today - timedelta(days=6)).isoformat(), today.isoformat())
    assert week["prompt_tokens"] == since(week_start)
    assert staff_api.get(LAST_N_DAYS, {"days": 1}).json()["prompt_tokens"] == 1
    default = staff_api.get(LAST_N_DAYS).json()
    assert default["start"] == (today - timedelta(days=29)).isoformat()
    month = staff_api.get(CURRENT_MONTH).json()
    assert (month["start"], month["end"]) == (first.isoformat(), today.isoformat())
    assert month["prompt_tokens"] == since(month_start)
    assert_breakdowns_add_up(month)
    # report without dates: the month to date
    assert staff_api.get(REPORT).json() == month


@pytest.mark.parametrize(
    "url, params, message",
    [
        (REPORT, {"start": "2025-13-01"}, "start"),
        (REPORT, {"start": "yesterday"}, "start"),
        (REPORT, {"end": "2025-02-30"}, "end"),
        (REPORT, {"start": "2025-03-01", "end": "2025-02-28"}, "is after end"),
        (REPORT, {"start": "2024-01-01", "end": "2025-01-01"}, "covers 367 days"),
        (REPORT, {"start": "9999-12-30", "end": "9999-12-31"}, "end must be on or before"),
        (REPORT, {**FEB, "format": "xml"}, "format"),
        (REPORT, {**FEB, "provider": "azure"}, "provider"),
        (REPORT, {**FEB, "top": "0"}, "top"),
        (REPORT, {**FEB, "top": "101"}, "top"),
        (REPORT, {**FEB, "model": "x" * 201}, "model"),
        (REPORT, {**FEB, "days": "7"}, "days: unknown field"),
        (REPORT, {**FEB, "user": "nobody"}, "unknown user 'nobody'"),
        (LAST_N_DAYS, {"days": "0"}, "days"),
        (LAST_N_DAYS, {"days": "367"}, "days"),
        (LAST_N_DAYS, {"days": "ten"}, "days"),
        (LAST_N_DAYS, {"days": "7", "format": "pdf"}, "format"),
        (LAST_N_DAYS, {"start": "2025-01-01"}, "start: unknown field"),
        (CURRENT_MONTH, {"end": "2025-01-01"}, "end: unknown field"),
    ],
)
def test_bad_input_is_400_with_the_error_shape_and_nothing_is_computed(staff_api, usage_rows, url, params, message):
    with UsageQueries(connection) as queries:
        response = staff_api.get(url, params)
        csv_response = staff_api.get(url, params, HTTP_ACCEPT="text/csv")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert set(error) == {"type", "message", "details"} and message in error["message"]
    assert csv_response.status_code == 400 and csv_response.json() == response.json()
    assert queries.usage_reads == []


def test_a_366_day_range_is_accepted(staff_api, usage_rows):
    response = staff_api.get(REPORT, {"start": "2024-02-29", "end": "2025-02-28"})
    assert response.status_code == 200 and response.json()["requests"] == 3
