"""The admin's own pages, through Django's test client: a job's and a dead letter's buttons (a confirmation first,
then a POST with the CSRF token through the services), the links job ↔ dead letter ↔ usage rows, timestamps to
the second, status colours, the spend page's range, breakdowns and CSV, the operations page's confirmation and
clear, and the live dashboard's frame."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from django.test import Client
from django.utils import timezone

from audit.models import AuditEntry
from dlq.models import DeadLetter
from jobs import transitions
from jobs.models import AIJob, JobStatus
from jobs.queues import queue_sizes, sizes_total
from tests.factories import TokenUsageFactory, UserFactory, submit_job
from tests.ops.conftest import sim
from usage.models import TokenUsage

pytestmark = pytest.mark.django_db(transaction=True)

JOBS = "/admin/jobs/aijob/"
DLQ = "/admin/dlq/deadletter/"
USAGE = "/admin/usage/tokenusage/"
SPEND = "/admin/usage/tokenusage/spend/"
OPERATIONS = "/admin/operations/"
SECONDS = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")


@pytest.fixture
def dead(user, run_worker):
    """A job that died (a non-retryable error) through the pipeline, with its dead letter and usage row."""
    job = submit_job(user, **sim(fail_attempts=9, error="auth"))
    run_worker()
    assert AIJob.objects.get(id=job.id).status == JobStatus.DEAD
    TokenUsageFactory(job_id=job.id, owner=user, attempt=1)  # the simulated 401 returned no usage; say it had
    return AIJob.objects.get(id=job.id)


@pytest.fixture
def root_client(db) -> Client:
    """The usage pages are Django-permission based (not staff-only like jobs and dead letters): a superuser."""
    client = Client()
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    return client


def csrf_client(user) -> tuple[Client, str]:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', client.get(OPERATIONS).content.decode())
    return client, token.group(1)


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


# --- a job's page ---


def test_a_dead_jobs_page_links_its_dead_letter_and_usage_and_offers_retry(staff_client, dead):
    entry = DeadLetter.objects.get(job_uuid=dead.id)
    html = staff_client.get(f"{JOBS}{dead.id}/change/").content.decode()
    assert 'id="job-retry-button"' in html and 'id="job-cancel-button"' not in html
    assert f'href="{DLQ}{entry.id}/change/"' in html and "open, AUTH_ERROR" in html
    assert f'href="{USAGE}?job={dead.id}"' in html and "1 provider call" in html
    assert len(SECONDS.findall(html)) >= 4  # created, started, finished, each attempt's times
    assert re.search(r'class="aipb-badge" style="background: #c0392b;[^"]*">dead<', html)


def test_retry_button_confirms_then_retries_through_the_service(staff_user, dead):
    client, token = csrf_client(staff_user)
    url = f"{JOBS}{dead.id}/do/retry/"
    page = client.get(url)
    assert page.status_code == 200 and "fresh budget of attempts" in page.content.decode()
    assert AIJob.objects.get(id=dead.id).status == JobStatus.DEAD  # a GET changes nothing
    assert client.post(url, {"reason": "key rotated"}).status_code == 403  # no CSRF token
    assert AIJob.objects.get(id=dead.id).status == JobStatus.DEAD

    response = client.post(url, {"reason": "key rotated", "csrfmiddlewaretoken": token}, follow=True)
    assert response.redirect_chain[-1][0] == f"{JOBS}{dead.id}/change/"
    assert f"Job {dead.id}: retry done." in messages_of(response)
    assert AIJob.objects.get(id=dead.id).status == JobStatus.QUEUED
    assert DeadLetter.objects.get(job_uuid=dead.id).status == "retried"
    entry = AuditEntry.objects.get(target_id=str(dead.id))
    assert (entry.actor, entry.source, entry.reason) == ("ops", "admin", "key rotated")
    html = response.content.decode()
    assert 'id="job-cancel-button"' in html and 'id="job-retry-button"' not in html  # queued now


def test_cancel_button_and_a_button_the_state_no_longer_allows(staff_client, user, redis_conn):
    job = submit_job(user)
    response = staff_client.post(f"{JOBS}{job.id}/do/cancel/", follow=True)
    assert AIJob.objects.get(id=job.id).status == JobStatus.CANCELED
    response = staff_client.post(f"{JOBS}{job.id}/do/cancel/", follow=True)  # twice: a conflict, reported
    assert any(m.startswith("Not done:") and "only queued or retrying" in m for m in messages_of(response))
    assert staff_client.get(f"{JOBS}{job.id}/do/explode/").status_code == 404
    assert staff_client.get(f"{JOBS}00000000-0000-0000-0000-000000000000/do/retry/").status_code == 404


def test_buttons_refuse_non_staff(user_client, dead):
    for client in (user_client, Client()):
        response = client.post(f"{JOBS}{dead.id}/do/retry/")
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert AIJob.objects.get(id=dead.id).status == JobStatus.DEAD


def test_job_list_colours_each_status(staff_client, user, redis_conn):
    submit_job(user)
    html = staff_client.get(JOBS).content.decode()
    assert re.search(r'class="aipb-badge" style="background: #6c7a89;[^"]*">queued<', html)


# --- a dead letter's page ---


def test_a_dead_letters_page_links_job_and_usage_and_discards_after_confirming(staff_user, dead):
    entry = DeadLetter.objects.get(job_uuid=dead.id)
    client, token = csrf_client(staff_user)
    html = client.get(f"{DLQ}{entry.id}/change/").content.decode()
    assert f'href="{JOBS}{dead.id}/change/"' in html and f'href="{USAGE}?job={dead.id}"' in html
    assert 'id="entry-retry-button"' in html and 'id="entry-discard-button"' in html
    assert SECONDS.search(html) and ">open<" in html

    page = client.get(f"{DLQ}{entry.id}/do/discard/").content.decode()
    assert "the job stays dead" in page and DeadLetter.objects.get(id=entry.id).status == "open"
    response = client.post(f"{DLQ}{entry.id}/do/discard/", {"csrfmiddlewaretoken": token}, follow=True)
    assert f"Dead letter {entry.id}: discard done." in messages_of(response)
    assert DeadLetter.objects.get(id=entry.id).status == "discarded"
    html = response.content.decode()
    assert 'id="entry-retry-button"' not in html and 'id="entry-discard-button"' not in html  # resolved


def test_retry_from_a_dead_letters_page(staff_client, dead):
    entry = DeadLetter.objects.get(job_uuid=dead.id)
    response = staff_client.post(f"{DLQ}{entry.id}/do/retry/", {"reason": ""}, follow=True)
    assert f"Dead letter {entry.id}: retry done." in messages_of(response)
    assert DeadLetter.objects.get(id=entry.id).status == "retried"
    assert AIJob.objects.get(id=dead.id).status == JobStatus.QUEUED


def test_an_entry_whose_job_was_deleted_offers_only_discard(staff_client, dead):
    entry = DeadLetter.objects.get(job_uuid=dead.id)
    AIJob.objects.filter(id=dead.id).delete()
    html = staff_client.get(f"{DLQ}{entry.id}/change/").content.decode()
    assert 'id="entry-retry-button"' not in html and 'id="entry-discard-button"' in html
    response = staff_client.post(f"{DLQ}{entry.id}/do/retry/", follow=True)  # asked for anyway
    assert any("was deleted; discard the entry instead" in m for m in messages_of(response))
    assert DeadLetter.objects.get(id=entry.id).status == "open"


# --- usage rows ---


def test_usage_rows_of_one_job_and_their_links_to_it(root_client, dead, user):
    TokenUsageFactory(owner=user)  # another job's
    page = root_client.get(USAGE, {"job": str(dead.id)})
    assert page.status_code == 200 and page.context["cl"].result_count == 1
    assert f'href="{JOBS}{dead.id}/change/"' in page.content.decode()
    assert root_client.get(USAGE, {"job": "not-a-uuid"}).context["cl"].result_count == 0
    assert root_client.get(USAGE).context["cl"].result_count == 2
    assert SECONDS.search(root_client.get(USAGE).content.decode())


# --- the spend page ---


@pytest.fixture
def spend(db):
    today = timezone.now()
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    TokenUsageFactory(owner=alice, cost=Decimal("1.5"), created_at=today)
    TokenUsageFactory(owner=bob, provider="openai", model="gpt-4o", cost=Decimal("2"), created_at=today)
    TokenUsageFactory(owner=bob, cost=Decimal("4"), created_at=today - timedelta(days=40))
    return today.date()


def test_spend_page_over_a_range_by_provider_model_and_user(root_client, spend):
    start = (spend - timedelta(days=45)).isoformat()
    page = root_client.get(SPEND, {"start": start, "end": spend.isoformat()})
    assert page.status_code == 200
    html = page.content.decode()
    assert '<strong id="usage-total-cost">$7.500000</strong>' in html
    assert page.context["summary"]["by_user"]["bob"]["estimated_cost"] == "6.000000"
    assert page.context["summary"]["by_model"]["gpt-4o"]["estimated_cost"] == "2.000000"
    assert 'id="spend-by-model"' in html and 'id="spend-by-user"' in html
    assert len(page.context["chart"]["bars"]) == 46  # every day of the range, empty ones too
    this_month = root_client.get(SPEND)  # the default: this month so far
    assert this_month.context["summary"]["start"] == spend.replace(day=1).isoformat()
    only_bob = root_client.get(SPEND, {"start": start, "user": "bob", "provider": "simulated"})
    assert only_bob.context["summary"]["total_estimated_cost"] == "4.000000"


def test_spend_csv_has_the_pages_filters(root_client, spend):
    start = (spend - timedelta(days=45)).isoformat()
    page = root_client.get(SPEND, {"start": start, "user": "bob"})
    csv_url = page.context["csv_url"]
    assert "format=csv" in csv_url and "user=bob" in csv_url
    response = root_client.get(SPEND + csv_url)
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == f'attachment; filename="usage-{start}-{spend.isoformat()}.csv"'
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert {row["user"] for row in rows} == {"bob"} and len(rows) == 2
    assert sum(Decimal(row["estimated_cost"]) for row in rows) == Decimal(6)


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ({"start": "2026-02-10", "end": "2026-02-01"}, "is after end"),
        ({"start": "2020-01-01", "end": "2026-01-01"}, "at most 366 days"),
        ({"start": "yesterday"}, "Enter a valid date"),
        ({"user": "nobody"}, "unknown user"),
        ({"provider": "acme"}, "Select a valid choice"),
    ],
)
def test_spend_page_says_what_is_wrong_with_the_range(root_client, spend, query, error):
    for params in (query, {**query, "format": "csv"}):
        page = root_client.get(SPEND, params)
        assert page.status_code == 200 and page.context["summary"] is None
        assert error in page.content.decode().replace("&#x27;", "'")


# --- the operations page ---


def test_clear_asks_first_then_cancels_the_waiting_jobs(staff_client, user, redis_conn):
    jobs = [submit_job(user, prompt=f"page {i}") for i in range(3)]
    waiting = sizes_total(queue_sizes(redis_conn))["waiting"]
    assert waiting == 3
    page = staff_client.post(OPERATIONS, {"action": "clear", "status": "waiting"})
    assert page.status_code == 200
    assert "3 deliveries waiting for a worker" in page.content.decode()
    assert {j.status for j in AIJob.objects.all()} == {JobStatus.QUEUED}

    response = staff_client.post(
        OPERATIONS, {"action": "clear", "status": "waiting", "confirmed": "yes", "reason": "bad batch"}, follow=True
    )
    assert "Cleared waiting: 3 deliveries taken out of Redis, 3 jobs canceled." in messages_of(response)
    assert set(AIJob.objects.filter(id__in=[j.id for j in jobs]).values_list("status", flat=True)) == {"canceled"}
    assert AuditEntry.objects.filter(reason="bad batch").exists()
    response = staff_client.post(OPERATIONS, {"action": "clear", "status": "everything"}, follow=True)
    assert any("Cannot clear 'everything'" in m for m in messages_of(response))


def test_close_intake_asks_first(staff_client, redis_conn):
    page = staff_client.post(OPERATIONS, {"action": "close-intake", "reason": "migration"})
    html = page.content.decode()
    assert page.status_code == 200 and "answers 503" in html and 'value="migration"' in html
    assert "INTAKE OPEN" in staff_client.get(OPERATIONS).content.decode()


def test_the_operations_page_links_the_live_dashboard_which_is_a_frame_for_its_script(staff_client, user_client):
    assert 'href="/admin/operations/dashboard/"' in staff_client.get(OPERATIONS).content.decode()
    page = staff_client.get("/admin/operations/dashboard/", {"window": "7d"})
    html = page.content.decode()
    assert page.status_code == 200 and 'data-api="/api/ai/stats/timeseries"' in html and 'data-window="7d"' in html
    assert re.findall(r"<script\b(?![^>]*\bsrc=)[^>]*>", html) == []  # nothing inline
    assert re.search(r'<script src="/static/monitoring/dashboard\.[0-9a-f]{12}\.js" defer>', html)
    assert 'data-window="1h"' in staff_client.get("/admin/operations/dashboard/", {"window": "1y"}).content.decode()
    response = user_client.get("/admin/operations/dashboard/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_a_running_job_offers_no_button(staff_client, user, redis_conn):
    job = submit_job(user)
    transitions.job_claim(job_id=str(job.id), rq_job_id=AIJob.objects.get(id=job.id).rq_job_id)
    html = staff_client.get(f"{JOBS}{job.id}/change/").content.decode()
    assert 'id="job-retry-button"' not in html and 'id="job-cancel-button"' not in html
    assert TokenUsage.objects.count() == 0
