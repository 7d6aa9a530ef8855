"""The trace id an operator is shown: the job API's detail and the admin page, from the traceparent saved with
the job. (The spans themselves, exported by a real gunicorn and worker, are tests/e2e/test_tracing.py.)"""

from __future__ import annotations

import pytest

from jobs.models import AIJob
from tests.factories import submit_job

pytestmark = pytest.mark.django_db(transaction=True)

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TEMPLATE = "https://tempo.example/explore?trace={trace_id}&x=1"


def test_an_untraced_job_runs_and_shows_no_trace(api, user, run_worker):
    job = submit_job(user, simulate={"fail_attempts": 1, "error": "unavailable"})
    run_worker()
    row = AIJob.objects.get(id=job.id)
    assert (row.status, row.attempts, row.traceparent) == ("succeeded", 2, ""), (row.error_type, row.error_message)
    detail = api.get(f"/api/ai/jobs/{job.id}").json()
    assert detail["trace_id"] == "" and detail["trace_url"] == ""


def test_the_detail_shows_the_saved_trace_and_its_link(api, user, redis_conn, settings):
    job = submit_job(user)
    AIJob.objects.filter(id=job.id).update(traceparent=PARENT)
    detail = api.get(f"/api/ai/jobs/{job.id}").json()
    assert detail["trace_id"] == TRACE_ID and detail["trace_url"] == ""
    settings.AIPB_TRACE_URL_TEMPLATE = TEMPLATE
    detail = api.get(f"/api/ai/jobs/{job.id}").json()
    assert detail["trace_id"] == TRACE_ID
    assert detail["trace_url"] == f"https://tempo.example/explore?trace={TRACE_ID}&x=1"
    # the list stays as it was: one trace per job is on its own page
    listed = api.get("/api/ai/jobs").json()
    rows = listed["results"] if isinstance(listed, dict) else listed
    assert "trace_id" not in rows[0]


def test_the_admin_page_shows_the_trace_and_links_it_with_a_template(staff_client, user, redis_conn, settings):
    untraced = submit_job(user)
    traced = submit_job(user)
    AIJob.objects.filter(id=traced.id).update(traceparent=PARENT)
    page = staff_client.get(f"/admin/jobs/aijob/{traced.id}/change/").content.decode()
    assert TRACE_ID in page and "tempo.example" not in page
    settings.AIPB_TRACE_URL_TEMPLATE = TEMPLATE
    page = staff_client.get(f"/admin/jobs/aijob/{traced.id}/change/").content.decode()
    assert f'<a href="https://tempo.example/explore?trace={TRACE_ID}&amp;x=1" rel="noopener">{TRACE_ID}</a>' in page
    page = staff_client.get(f"/admin/jobs/aijob/{untraced.id}/change/").content.decode()
    assert TRACE_ID not in page and "tempo.example" not in page
