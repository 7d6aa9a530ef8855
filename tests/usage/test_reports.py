"""Reports computed by the database: exact totals, breakdowns, UTC date boundaries, CSV = JSON."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from tests.factories import UserFactory
from usage import reports
from usage.models import TokenUsage
from usage.reports import month_to_date_summary, report_filters, usage_report

from .conftest import assert_breakdowns_add_up, csv_totals, record, utc

pytestmark = pytest.mark.usefixtures("prices")


def report(start, end, **kwargs) -> dict:
    top = kwargs.pop("top", 10)
    body = usage_report(filters=report_filters(start=start, end=end, **kwargs), top=top)
    assert_breakdowns_add_up(body)
    return body


def csv_text(start, end, **kwargs) -> str:
    return "".join(reports.csv_stream(filters=report_filters(start=start, end=end, **kwargs)))


@pytest.fixture
def month(user, other_user, staff_user, settings):
    """February 2025 across providers, models and users, with cached tokens and unpriced calls."""
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # lets an unknown (never priced) model name through
    rows = [
        # sim-small 1/2: 1M in + 500k out = 1 + 1
        record(user, prompt=1_000_000, completion=500_000, at=utc(2025, 2, 1)),
        # gpt-4o 2.50/10/1.25 cached: 200k fresh 0.50 + 800k cached 1.00 + 50k out 0.50
        record(user, provider="openai", model="gpt-4o", prompt=1_000_000, cached=800_000, completion=50_000,
               at=utc(2025, 2, 14, 9, 30)),
        # claude-3-haiku 0.25/1.25/0.03/0.30: 100k fresh 0.025 + 1M read 0.03 + 100k write 0.03 + 40k out 0.05
        record(other_user, provider="anthropic", model="claude-3-haiku", prompt=1_200_000, cached=1_000_000,
               cache_write=100_000, completion=40_000, at=utc(2025, 2, 14, 23, 59, 59)),
        # unpriced: no public price, and a model nobody ever priced
        record(other_user, provider="google", model="gemma-4-31b-it", prompt=5_000, completion=1_000,
               at=utc(2025, 2, 28, 23, 59, 59)),
        record(staff_user, provider="openai", model="llama3.1:8b", prompt=7, completion=3, at=utc(2025, 2, 20)),
        # sim-large 10/20: 300k out = 6
        record(staff_user, model="sim-large", prompt=0, completion=300_000, at=utc(2025, 2, 20, 12)),
    ]  # fmt: skip
    return rows


def test_exact_totals_to_the_cent_with_cached_tokens_and_unpriced_calls(month):
    body = report(utc(2025, 2, 1).date(), utc(2025, 2, 28).date())
    assert body["start"] == "2025-02-01" and body["end"] == "2025-02-28"
    assert body["requests"] == 6
    assert body["prompt_tokens"] == 1_000_000 + 1_000_000 + 1_200_000 + 5_000 + 7
    assert body["cached_tokens"] == 800_000 + 1_000_000
    assert body["completion_tokens"] == 500_000 + 50_000 + 40_000 + 1_000 + 3 + 300_000
    assert body["total_tokens"] == body["prompt_tokens"] + body["completion_tokens"]
    assert body["total_estimated_cost"] == "10.135000"  # 2 + 2 + 0.135 + 6; unpriced are not zero-cost rows
    assert body["unpriced_requests"] == 2

    assert body["by_provider"]["simulated"] == {
        "requests": 2, "prompt_tokens": 1_000_000, "completion_tokens": 800_000, "cached_tokens": 0,
        "total_tokens": 1_800_000, "estimated_cost": "8.000000", "unpriced_requests": 0,
    }  # fmt: skip
    assert body["by_provider"]["openai"]["estimated_cost"] == "2.000000"
    assert body["by_provider"]["openai"]["unpriced_requests"] == 1
    assert body["by_model"]["claude-3-haiku"]["estimated_cost"] == "0.135000"
    assert body["by_model"]["gemma-4-31b-it"] == {
        "requests": 1, "prompt_tokens": 5_000, "completion_tokens": 1_000, "cached_tokens": 0,
        "total_tokens": 6_000, "estimated_cost": "0.000000", "unpriced_requests": 1,
    }  # fmt: skip
    assert set(body["by_user"]) == {"alice", "bob", "ops"}
    assert body["by_user"]["alice"]["estimated_cost"] == "4.000000"
    assert sorted(body["by_date"]) == ["2025-02-01", "2025-02-14", "2025-02-20", "2025-02-28"]
    assert body["by_date"]["2025-02-14"]["requests"] == 2
    assert body["top_users"] == [
        {"user": "ops", "requests": 2, "total_tokens": 300_010, "estimated_cost": "6.000000"},
        {"user": "alice", "requests": 2, "total_tokens": 2_550_000, "estimated_cost": "4.000000"},
        {"user": "bob", "requests": 2, "total_tokens": 1_246_000, "estimated_cost": "0.135000"},
    ]


def test_the_report_is_one_aggregate_statement(month):
    with CaptureQueriesContext(connection) as queries:
        report(utc(2025, 2, 1).date(), utc(2025, 2, 28).date())
    usage_reads = [q["sql"] for q in queries.captured_queries if "usage_tokenusage" in q["sql"]]
    assert len(usage_reads) == 1 and "GROUPING SETS" in usage_reads[0]
    assert len(queries.captured_queries) == 2, "plus one username lookup"


def test_filters_by_provider_model_alias_and_user(month, other_user):
    feb = (utc(2025, 2, 1).date(), utc(2025, 2, 28).date())
    assert report(*feb, provider="simulated")["total_estimated_cost"] == "8.000000"
    by_alias = report(*feb, model="gpt-4o-2024-11-20")
    assert by_alias["requests"] == 1 and list(by_alias["by_model"]) == ["gpt-4o"]
    assert report(*feb, provider="simulated", model="sim-large")["requests"] == 1
    bob = report(*feb, username="bob")
    assert list(bob["by_user"]) == ["bob"] and bob["requests"] == 2 and bob["unpriced_requests"] == 1
    assert report(*feb, owner_id=other_user.pk) == bob


def test_top_users_by_cost_then_tokens_and_limited_by_top(prices, db):
    day = utc(2025, 6, 1, 12)
    for name, prompt in (("cheap", 10), ("tie-fewer", 1_000), ("tie-more", 0), ("dear", 5_000_000)):
        record(UserFactory(username=name), prompt=prompt, completion=0 if name != "tie-more" else 500, at=day)
    # tie-fewer: 1000 in = 0.001; tie-more: 500 out = 0.001 -- same cost, tie-fewer has more tokens
    body = report(day.date(), day.date(), top=3)
    assert [u["user"] for u in body["top_users"]] == ["dear", "tie-fewer", "tie-more"]
    assert len(body["by_user"]) == 4


def test_date_boundaries_are_utc_midnights_and_month_ends(user):
    record(user, prompt=1, at=utc(2025, 1, 31, 23, 59, 59, 999_999))  # January
    record(user, prompt=10, at=utc(2025, 2, 1))  # first instant of February
    record(user, prompt=100, at=utc(2025, 2, 28, 23, 59, 59, 999_999))  # last instant of February
    record(user, prompt=1_000, at=utc(2025, 3, 1))  # March
    record(user, prompt=10_000, at=utc(2024, 2, 29, 12))  # leap day

    feb = report(utc(2025, 2, 1).date(), utc(2025, 2, 28).date())
    assert feb["prompt_tokens"] == 110 and sorted(feb["by_date"]) == ["2025-02-01", "2025-02-28"]
    assert report(utc(2025, 1, 31).date(), utc(2025, 1, 31).date())["prompt_tokens"] == 1
    assert report(utc(2025, 3, 1).date(), utc(2025, 3, 1).date())["prompt_tokens"] == 1_000
    assert report(utc(2025, 1, 31).date(), utc(2025, 3, 1).date())["prompt_tokens"] == 1_111
    leap = report(utc(2024, 2, 29).date(), utc(2024, 2, 29).date())
    assert leap["by_date"] == {"2024-02-29": leap["by_date"]["2024-02-29"]} and leap["prompt_tokens"] == 10_000
    assert leap["total_estimated_cost"] == "0.010000"


def test_csv_has_one_line_per_date_provider_model_user_and_equals_the_json(month):
    feb = (utc(2025, 2, 1).date(), utc(2025, 2, 28).date())
    body = report(*feb)
    text = csv_text(*feb)
    lines = text.splitlines()
    assert lines[0] == (
        "date,provider,model,user,requests,prompt_tokens,completion_tokens,cached_tokens,total_tokens,"
        "estimated_cost,unpriced_requests"
    )
    assert lines[1] == "2025-02-01,simulated,sim-small,alice,1,1000000,500000,0,1500000,2.000000,0"
    assert len(lines) == 1 + 6
    assert csv_totals(text) == {key: body[key] for key in ("by_date", "by_provider", "by_model", "by_user")}


def test_csv_reads_through_chunks_in_order(user, other_user):
    # more groups than one fetch from the server-side cursor (rows inserted directly: this is about reading)
    day = utc(2025, 7, 1)
    count = reports.CSV_CHUNK_ROWS + 5
    TokenUsage.objects.bulk_create(
        TokenUsage(
            owner=user if (i // 300) % 2 else other_user, attempt=1, provider="simulated", model="sim-small",
            prompt_tokens=i, cost=Decimal(i) / 1_000_000, created_at=day + timedelta(days=i % 300, seconds=i),
        )
        for i in range(count)
    )  # fmt: skip
    text = csv_text(day.date(), (day + timedelta(days=299)).date())
    lines = text.splitlines()[1:]
    assert len(lines) == 600  # 300 days x 2 users
    assert lines == sorted(lines, key=lambda line: (line.split(",")[0], line.split(",")[3]))
    body = report(day.date(), (day + timedelta(days=299)).date())
    assert csv_totals(text)["by_user"] == body["by_user"] and body["requests"] == count


def test_csv_neutralises_spreadsheet_formulas_in_names(user, settings):
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"
    record(user, provider="openai", model='=HYPERLINK("http://x")', prompt=1, at=utc(2025, 2, 2))
    text = csv_text(utc(2025, 2, 2).date(), utc(2025, 2, 2).date())
    assert "'=HYPERLINK" in text and ",=HYPERLINK" not in text


def test_month_to_date_summary_for_the_ops_page(user, other_user):
    today = reports.utc_today()
    first = today.replace(day=1)
    record(user, prompt=1_000_000, at=utc(first.year, first.month, first.day))  # 1.00
    record(other_user, model="sim-large", completion=100_000, at=utc(today.year, today.month, today.day))  # 2.00
    record(user, prompt=1_000_000, at=utc(first.year, first.month, first.day) - timedelta(microseconds=1))  # before

    summary = month_to_date_summary(today=today)
    assert summary["start"] == first.isoformat() and summary["end"] == today.isoformat()
    assert summary["total_estimated_cost"] == "3.000000" and summary["requests"] == 2
    assert set(summary["by_provider"]) == {"simulated"}
    assert summary["by_provider"]["simulated"]["estimated_cost"] == "3.000000"
    assert list(summary["by_date"]) == [(first + timedelta(days=i)).isoformat() for i in range(today.day)]
    assert sum(Decimal(d["estimated_cost"]) for d in summary["by_date"].values()) == Decimal(3)


def test_ranges_last_n_days_and_month_to_date():
    today = utc(2025, 3, 1).date()
    assert reports.range_last_n_days(days=1, today=today) == (today, today)
    assert reports.range_last_n_days(days=30, today=today) == (utc(2025, 1, 31).date(), today)
    assert reports.range_last_n_days(days=366, today=today) == (utc(2024, 3, 1).date(), today)
    assert reports.range_month_to_date(today=utc(2024, 2, 29).date()) == (
        utc(2024, 2, 1).date(),
        utc(2024, 2, 29).date(),
    )
    assert reports.range_between(start=None, end=utc(2025, 2, 10).date()) == (
        utc(2025, 2, 1).date(),
        utc(2025, 2, 10).date(),
    )
