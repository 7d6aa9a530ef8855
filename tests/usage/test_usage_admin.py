"""Admin: usage rows read-only, price edits add a row (history kept), this month's spend page."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tests.factories import UserFactory
from usage import reports
from usage.models import ModelPrice, TokenUsage

from .conftest import record, utc

pytestmark = pytest.mark.usefixtures("prices")

USAGE = "/admin/usage/tokenusage/"
PRICES = "/admin/usage/modelprice/"
SPEND = "/admin/usage/tokenusage/spend/"


@pytest.fixture
def admin_client(db) -> Client:
    client = Client()
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    return client


@pytest.fixture
def row(user) -> TokenUsage:
    record(user, provider="google", model="gemma-4-31b-it", prompt=5, at=utc(2025, 2, 3))
    return record(user, prompt=1_000_000, completion=10, at=utc(2025, 2, 3, 10))


def test_usage_changelist_with_filters_and_date_hierarchy(admin_client, row):
    page = admin_client.get(USAGE)
    assert page.status_code == 200
    html = page.content.decode()
    assert "alice" in html and "1.000020000" in html and "unpriced" in html
    assert "This month&#x27;s spend" in html or "This month's spend" in html
    assert 'href="/admin/usage/tokenusage/spend/"' in html
    assert admin_client.get(USAGE, {"provider": "simulated", "priced": "yes"}).context["cl"].result_count == 1
    assert admin_client.get(USAGE, {"priced": "no"}).context["cl"].result_count == 1
    assert admin_client.get(USAGE, {"model": "gemma-4-31b-it"}).context["cl"].result_count == 1
    drill = admin_client.get(USAGE, {"created_at__year": 2025, "created_at__month": 2, "created_at__day": 3})
    assert drill.status_code == 200 and drill.context["cl"].result_count == 2
    assert admin_client.get(USAGE, {"q": "alice"}).context["cl"].result_count == 2


def test_date_hierarchy_links_come_from_min_and_max_not_a_scan(admin_client, user):
    record(user, prompt=1, at=utc(2023, 11, 30))
    record(user, prompt=1, at=utc(2025, 2, 3))
    with CaptureQueriesContext(connection) as queries:
        page = admin_client.get(USAGE)
    html = page.content.decode()
    for year in (2023, 2024, 2025):
        assert f"?created_at__year={year}" in html
    assert not [q for q in queries.captured_queries if "DISTINCT DATE_TRUNC" in q["sql"]]
    months = admin_client.get(USAGE, {"created_at__year": 2025}).content.decode()
    assert "created_at__month=2" in months and "created_at__month=3" not in months
    assert admin_client.get(USAGE, {"created_at__year": 2024}).context["cl"].result_count == 0


def test_usage_rows_are_read_only(admin_client, row):
    detail = admin_client.get(f"{USAGE}{row.pk}/change/")
    assert detail.status_code == 200 and 'name="_save"' not in detail.content.decode()
    assert admin_client.post(f"{USAGE}{row.pk}/change/", {"prompt_tokens": 1}).status_code == 403
    assert admin_client.get(f"{USAGE}add/").status_code == 403
    assert admin_client.post(f"{USAGE}{row.pk}/delete/", {"post": "yes"}).status_code == 403
    row.refresh_from_db()
    assert row.prompt_tokens == 1_000_000 and TokenUsage.objects.count() == 2


def test_spend_page_charts_this_months_spend_by_provider_and_day(admin_client, user):
    today = reports.utc_today()
    record(user, prompt=2_000_000, at=utc(today.year, today.month, today.day))  # 2.00
    record(user, provider="openai", model="gpt-4", prompt=100_000, at=utc(today.year, today.month, 1))  # 3.00
    page = admin_client.get(SPEND)
    assert page.status_code == 200
    html = page.content.decode()
    assert '<strong id="usage-total-cost">$5.000000</strong>' in html
    assert page.context["summary"]["by_provider"]["openai"]["estimated_cost"] == "3.000000"
    assert [p["name"] for p in page.context["providers"]] == ["openai", "simulated"]
    assert page.context["providers"][0]["percent"] == 100.0
    bars = page.context["chart"]["bars"]
    assert len(bars) == today.day and html.count('<rect class="bar"') == today.day
    assert bars[0]["height"] == page.context["chart"]["height"] or today.day == 1
    scripts = re.findall(r"<script\b[^>]*>", html)
    assert all('src="/static/admin/' in tag for tag in scripts), "no inline or third-party scripts: " + str(scripts)


def test_spend_page_needs_staff_with_view_permission(client, user, db):
    assert client.get(SPEND).status_code == 302  # to the admin login
    client.force_login(UserFactory(username="helper", is_staff=True))  # staff without any permission
    assert client.get(SPEND).status_code == 403


def test_editing_a_price_adds_a_new_row_and_keeps_the_old_one(admin_client, user):
    record(user, prompt=1_000_000, at=utc(2025, 2, 3))  # costed at 1.00
    old = ModelPrice.objects.get(provider="simulated", model="sim-small")
    form = admin_client.get(f"{PRICES}{old.pk}/change/")
    assert form.status_code == 200
    effective = timezone.now() + timedelta(minutes=5)
    response = admin_client.post(
        f"{PRICES}{old.pk}/change/",
        {
            "input_per_million": "1.25", "output_per_million": "2", "cached_input_per_million": "",
            "cache_write_per_million": "", "effective_from_0": effective.strftime("%Y-%m-%d"),
            "effective_from_1": effective.strftime("%H:%M:%S"),
        },
    )  # fmt: skip
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    rows = list(ModelPrice.objects.filter(provider="simulated", model="sim-small").order_by("effective_from"))
    assert len(rows) == 2
    assert (rows[0].pk, rows[0].input_per_million, rows[0].effective_from) == (old.pk, Decimal(1), utc(2024, 1, 1))
    assert rows[1].input_per_million == Decimal("1.25")
    assert rows[1].effective_from == effective.replace(microsecond=0)
    assert TokenUsage.objects.get().cost == Decimal(1), "recorded usage is never repriced"
    listing = admin_client.get(PRICES, {"provider": "simulated"}).content.decode()
    assert "scheduled" in listing and "in force" in listing


@pytest.mark.parametrize(
    "changes, error",
    [
        ({}, "No price changed"),
        ({"input_per_million": "-2"}, "must not be negative"),
        ({"input_per_million": "3", "effective_from_0": "2025-02-01"}, "has usage recorded at"),
    ],
)
def test_bad_price_edits_are_form_errors_and_add_nothing(admin_client, user, changes, error):
    record(user, prompt=1, at=utc(2025, 2, 3))
    old = ModelPrice.objects.get(provider="simulated", model="sim-small")
    now = timezone.now()
    data = {
        "input_per_million": "1", "output_per_million": "2", "cached_input_per_million": "",
        "cache_write_per_million": "", "effective_from_0": now.strftime("%Y-%m-%d"),
        "effective_from_1": now.strftime("%H:%M:%S"), **changes,
    }  # fmt: skip
    before = list(ModelPrice.objects.order_by("id").values())
    response = admin_client.post(f"{PRICES}{old.pk}/change/", data)
    assert response.status_code == 200 and error in response.content.decode()
    assert list(ModelPrice.objects.order_by("id").values()) == before


def test_adding_a_price_for_an_unpriced_model_and_no_deleting(admin_client, user):
    # a busy model: usage recorded after the form was opened does not block a price effective "now"
    page = admin_client.get(f"{PRICES}add/")
    assert page.status_code == 200
    record(user, provider="google", model="gemma-3", prompt=1, at=timezone.now())
    before = timezone.now()
    response = admin_client.post(
        f"{PRICES}add/",
        {
            "provider": "google", "model": "gemma-3-27b-it", "input_per_million": "10",
            "output_per_million": "30", "cached_input_per_million": "", "cache_write_per_million": "",
            "effective_from_0": "", "effective_from_1": "",
        },
    )  # fmt: skip
    assert response.status_code == 302
    gemma = ModelPrice.objects.get(provider="google", model="gemma-3")  # the alias was canonicalized
    assert before <= gemma.effective_from <= timezone.now()
    assert admin_client.post(f"{PRICES}{gemma.pk}/delete/", {"post": "yes"}).status_code == 403
    assert ModelPrice.objects.filter(pk=gemma.pk).exists()
