"""The intake switch: closed, submissions answer 503 intake_closed with Retry-After and write nothing, while
workers keep draining what was queued; opened, submissions are accepted again. From the queue API and the
operations page (the `queue intake` command has its own tests beside the other queue commands)."""

from __future__ import annotations

import logging

import pytest

from jobs.models import AIJob, JobStatus
from jobs.queue_control import queue_pause, queue_status
from jobs.worker import AIPBSimpleWorker

INTAKE = "/api/ai/queue/intake"
JOBS = "/api/ai/jobs"
BODY = {"prompt": "a page", "provider": "local"}


@pytest.fixture(autouse=True)
def _clean_redis(redis_conn):
    yield


def test_closed_intake_refuses_submissions_while_workers_drain(staff_api, api, run_worker):
    queued = api.post(JOBS, BODY, format="json").json()["id"]

    closed = staff_api.post(INTAKE, {"open": False, "reason": "provider migration"}, format="json")

    assert closed.status_code == 200
    assert closed.json()["intake"] == {
        "open": False,
        "closed_by": "ops",
        "closed_at": closed.json()["intake"]["closed_at"],
        "reason": "provider migration",
    }
    refused = api.post(JOBS, {**BODY, "prompt": "another"}, format="json")
    assert refused.status_code == 503
    assert refused.json()["error"]["type"] == "intake_closed"
    assert "provider migration" in refused.json()["error"]["message"]
    assert int(refused["Retry-After"]) == 60
    assert AIJob.objects.count() == 1  # nothing written

    run_worker(worker_class=AIPBSimpleWorker)  # workers keep draining
    assert AIJob.objects.get(id=queued).status == JobStatus.SUCCEEDED

    assert staff_api.post(INTAKE, {"open": True}, format="json").json()["intake"]["open"] is True
    assert api.post(JOBS, BODY, format="json").status_code == 201


def test_a_second_close_keeps_the_first_ones_reason(staff_api):
    staff_api.post(INTAKE, {"open": False, "reason": "first"}, format="json")
    second = staff_api.post(INTAKE, {"open": False, "reason": "second"}, format="json").json()
    assert second["intake"]["reason"] == "first"
    assert queue_status()["intake"]["reason"] == "first"


@pytest.mark.parametrize(
    "body",
    [{}, {"open": "maybe"}, {"open": None}, {"open": False, "reason": "x" * 501}, {"open": False, "extra": 1}, []],
)
def test_bad_input_is_a_400_and_changes_nothing(staff_api, body):
    response = staff_api.post(INTAKE, body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["type"] == "validation_error"
    assert queue_status()["intake"]["open"] is True


def test_only_staff_may_switch_intake(api, anon_api):
    assert api.post(INTAKE, {"open": False}, format="json").status_code == 403
    assert anon_api.post(INTAKE, {"open": False}, format="json").status_code == 401
    assert queue_status()["intake"]["open"] is True


def test_the_operations_page_shows_and_switches_intake(staff_client):
    page = staff_client.get("/admin/operations/").content.decode()
    assert "INTAKE OPEN" in page

    response = staff_client.post(
        "/admin/operations/", {"action": "close-intake", "reason": "deploy", "confirmed": "yes"}
    )

    assert response.status_code == 302
    page = staff_client.get("/admin/operations/").content.decode()
    assert "INTAKE CLOSED" in page and "deploy" in page and 'id="open-intake-button"' in page
    staff_client.post("/admin/operations/", {"action": "open-intake"})
    assert queue_status()["intake"]["open"] is True


def test_operator_text_cannot_forge_a_log_line(caplog, db):
    with caplog.at_level(logging.WARNING, logger="jobs.queue_control"):
        queue_pause(by="ops", reason="maintenance\n2026-12-03 WARNING jobs.queue_control queue resumed by admin")
    lines = [r.getMessage() for r in caplog.records if r.name == "jobs.queue_control"]
    assert len(lines) == 1 and "\n" not in lines[0], lines
