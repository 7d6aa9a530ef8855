"""The Django admin for jobs and the operations page, through Django's test client, as staff and as not-staff."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from rq.suspension import is_suspended

from dlq.models import DeadLetter
from jobs import transitions
from jobs.models import AIJob, JobStatus
from tests.factories import submit_job
from tests.ops.conftest import sim
from usage.pricing import price_data_info
from usage.reports import month_to_date_summary

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/jobs/aijob/"
OPERATIONS = "/admin/operations/"


@pytest.fixture
def jobs(user, other_user, run_worker):
    ok = submit_job(user, prompt="A landing page for a bakery in Lisbon")
    dead = submit_job(other_user, prompt="A page for a florist", **sim(fail_attempts=9, error="auth"))
    run_worker()
    queued = submit_job(user, prompt="A page for a dentist", priority="high")
    running = submit_job(user, prompt="A page for a bike shop")
    transitions.job_claim(job_id=str(running.id), rq_job_id=AIJob.objects.get(id=running.id).rq_job_id)
    return {"ok": ok, "dead": dead, "queued": queued, "running": running}


def statuses(jobs: dict) -> dict:
    rows = dict(AIJob.objects.values_list("id", "status"))
    return {name: rows.get(job.id) for name, job in jobs.items()}


def listed_ids(response) -> list[str]:
    return re.findall(r'name="_selected_action" value="([0-9a-f-]{36})"', response.content.decode())


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


# --- the job list ---


def test_staff_sees_the_job_list_with_its_columns(staff_client, jobs):
    response = staff_client.get(CHANGELIST)
    assert response.status_code == 200
    html = response.content.decode()
    assert listed_ids(response) == [str(jobs[k].id) for k in ("running", "queued", "dead", "ok")]
    for column in ("Status", "Provider", "Model", "Priority", "Attempts", "Age", "Owner"):
        assert f">{column}<" in html or f">{column}</a>" in html, column
    assert "AUTH_ERROR" in html and "1/3" in html
    # filters and the date hierarchy are there
    assert "By status" in html and "By provider" in html and 'class="toplinks"' in html
    actions = re.findall(r'<option value="(\w+)"', html)
    assert {"retry_selected", "cancel_selected", "delete_selected_jobs"} <= set(actions)
    assert "delete_selected" not in actions  # Django's own delete would bypass the services


def test_filters_search_and_date_hierarchy(staff_client, jobs):
    dead = staff_client.get(CHANGELIST, {"status__exact": "dead"})
    assert listed_ids(dead) == [str(jobs["dead"].id)]
    by_id = staff_client.get(CHANGELIST, {"q": str(jobs["ok"].id)})
    assert listed_ids(by_id) == [str(jobs["ok"].id)]
    by_prefix = staff_client.get(CHANGELIST, {"q": str(jobs["queued"].id)[:8]})
    assert str(jobs["queued"].id) in listed_ids(by_prefix)
    by_owner = staff_client.get(CHANGELIST, {"q": "bob"})
    assert listed_ids(by_owner) == [str(jobs["dead"].id)]
    by_prompt = staff_client.get(CHANGELIST, {"q": "bakery Lisbon"})
    assert listed_ids(by_prompt) == [str(jobs["ok"].id)]
    year = AIJob.objects.get(id=jobs["ok"].id).created_at.year
    this_year = staff_client.get(CHANGELIST, {"created_at__year": year})
    assert len(listed_ids(this_year)) == 4
    assert listed_ids(staff_client.get(CHANGELIST, {"created_at__year": year - 1})) == []


def test_change_page_shows_the_page_json_readably_and_the_attempts_read_only(staff_client, jobs):
    response = staff_client.get(f"{CHANGELIST}{jobs['ok'].id}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    result = AIJob.objects.get(id=jobs["ok"].id).result
    # pretty-printed (indented, one key per line) inside a <pre>, HTML-escaped
    assert "<pre" in html and "\n  &quot;sections&quot;: [\n" in html
    assert f"&quot;title&quot;: &quot;{result['title']}&quot;" in html.replace("&#x27;", "'")
    assert "Job attempts" in html or "job attempts" in html.lower()
    assert "succeeded" in html
    assert 'name="_save"' not in html and "deletelink" not in html  # read-only; changes go through actions
    assert staff_client.post(f"{CHANGELIST}{jobs['ok'].id}/change/", {"status": "dead"}).status_code == 403
    assert AIJob.objects.get(id=jobs["ok"].id).status == JobStatus.SUCCEEDED
    assert staff_client.get(f"{CHANGELIST}add/").status_code == 403
    assert staff_client.get(f"{CHANGELIST}{jobs['ok'].id}/delete/").status_code == 403


# --- actions ---


def act(client, action: str, *jobs):
    return client.post(
        CHANGELIST,
        {"action": action, "_selected_action": [str(j.id) for j in jobs], "index": "0"},
        follow=True,
    )


def test_retry_action_retries_the_dead_and_reports_the_conflicts(staff_client, jobs):
    response = act(staff_client, "retry_selected", jobs["dead"], jobs["ok"])
    assert response.status_code == 200
    assert statuses(jobs) == {"ok": "succeeded", "dead": "queued", "queued": "queued", "running": "running"}
    found = messages_of(response)
    assert "retried 1 job." in found
    assert "1 job not retried (state changed or not allowed)." in found
    assert any("is succeeded; only dead or canceled jobs can be retried" in m for m in found)
    assert DeadLetter.objects.get(job_uuid=jobs["dead"].id).status == "retried"


def test_cancel_action(staff_client, jobs):
    response = act(staff_client, "cancel_selected", jobs["queued"], jobs["dead"], jobs["running"])
    assert statuses(jobs) == {"ok": "succeeded", "dead": "dead", "queued": "canceled", "running": "running"}
    assert "canceled 1 job." in messages_of(response)
    assert "2 jobs not canceled (state changed or not allowed)." in messages_of(response)


def test_delete_action_deletes_through_the_service_and_keeps_running_jobs(staff_client, jobs):
    response = act(staff_client, "delete_selected_jobs", jobs["ok"], jobs["running"])
    assert statuses(jobs) == {"ok": None, "dead": "dead", "queued": "queued", "running": "running"}
    assert "deleted 1 job." in messages_of(response)
    assert any("is running" in m for m in messages_of(response))


def test_non_staff_and_anonymous_are_refused_and_nothing_changes(user_client, jobs):
    before = statuses(jobs)
    for client in (user_client, Client()):
        response = client.get(CHANGELIST)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
        for action in ("retry_selected", "cancel_selected", "delete_selected_jobs"):
            response = client.post(
                CHANGELIST, {"action": action, "_selected_action": [str(j.id) for j in jobs.values()], "index": "0"}
            )
            assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
        assert client.get(f"{CHANGELIST}{jobs['ok'].id}/change/").status_code == 302
    assert statuses(jobs) == before


def test_staff_without_an_action_selection_changes_nothing(staff_client, jobs):
    before = statuses(jobs)
    response = staff_client.post(CHANGELIST, {"action": "retry_selected", "index": "0"}, follow=True)
    assert response.status_code == 200
    response = staff_client.post(
        CHANGELIST, {"action": "no_such_action", "_selected_action": [str(jobs["dead"].id)], "index": "0"}
    )
    assert response.status_code in (200, 302)
    assert statuses(jobs) == before


# --- the operations page ---


def test_admin_index_links_the_operations_page_and_django_rq(staff_client):
    html = staff_client.get("/admin/").content.decode()
    assert f'href="{OPERATIONS}"' in html and 'href="/django-rq/"' in html


def test_operations_page_shows_live_numbers(staff_client, jobs, worker_process, settings):
    submit_job(jobs["ok"].owner, prompt="wait", priority="low")
    worker = worker_process()  # takes the waiting ones; we read the page with it registered
    response = staff_client.get(OPERATIONS)
    assert response.status_code == 200
    html = response.content.decode()
    queue = response.context["queue"]
    assert queue["worker_count"] == 1 and str(worker.pid) in html
    assert re.search(r'id="paused-state">RUNNING<', html) and 'id="pause-button"' in html
    for status in ("waiting", "active", "delayed", "completed", "failed"):
        assert f'id="total-{status}">{queue["totals"][status]}<' in html
    assert f"{queue['jobs']['running']} running" in html
    dlq = response.context["dlq"]
    assert dlq["open"] == 1 and 'id="dlq-open">1<' in html and "AUTH_ERROR" in html
    spend = month_to_date_summary()
    assert f'id="spend-total">{spend["total_estimated_cost"]}<' in html
    assert spend["requests"] >= 1 and spend["by_provider"]
    assert all(f"<td>{name}</td>" in html for name in spend["by_provider"])
    assert 'href="/django-rq/"' in html and f'href="{CHANGELIST}"' in html


def test_pause_and_resume_buttons_need_staff_and_a_csrf_token(staff_user, user_client, redis_conn):
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff_user)
    page = client.get(OPERATIONS)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)

    assert client.post(OPERATIONS, {"action": "pause"}).status_code == 403  # no CSRF token
    assert not is_suspended(redis_conn)
    assert user_client.post(OPERATIONS, {"action": "pause"}).status_code == 302  # to the login page
    assert Client().post(OPERATIONS, {"action": "pause"}).status_code == 302
    assert not is_suspended(redis_conn)

    pause = {"action": "pause", "reason": "bad deploy", "csrfmiddlewaretoken": token}
    response = client.post(OPERATIONS, pause)  # first a page that says what pausing does
    assert response.status_code == 200 and 'id="confirm-button"' in response.content.decode()
    assert not is_suspended(redis_conn)
    response = client.post(OPERATIONS, {**pause, "confirmed": "yes"}, follow=True)
    assert is_suspended(redis_conn)
    html = response.content.decode()
    assert 'id="paused-state">PAUSED<' in html and "by ops: bad deploy" in html and 'id="resume-button"' in html

    response = client.post(OPERATIONS, {"action": "explode", "csrfmiddlewaretoken": token}, follow=True)
    assert "Unknown action." in messages_of(response) and is_suspended(redis_conn)

    response = client.post(OPERATIONS, {"action": "resume", "csrfmiddlewaretoken": token}, follow=True)
    assert not is_suspended(redis_conn) and 'id="paused-state">RUNNING<' in response.content.decode()


def test_operations_page_refuses_non_staff(user_client):
    for client in (user_client, Client()):
        response = client.get(OPERATIONS)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/")


def test_the_operations_page_names_the_price_data(staff_client):
    info = price_data_info()
    page = staff_client.get("/admin/operations/").content.decode()
    assert 'id="price-data"' in page
    assert f"{info['package']} {info['version']}" in page
