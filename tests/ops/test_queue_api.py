"""GET /api/ai/queue, POST /api/ai/queue/pause, POST /api/ai/queue/resume: staff only."""

from __future__ import annotations

import pytest
from rq.suspension import is_suspended

from jobs.queue_control import queue_status
from tests.factories import submit_job

pytestmark = pytest.mark.django_db


@pytest.mark.django_db(transaction=True)
def test_staff_reads_the_queue_status(staff_api, user, redis_conn):
    jobs = [submit_job(user), submit_job(user, priority="high")]
    response = staff_api.get("/api/ai/queue")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "paused",
        "intake",
        "paused_by",
        "paused_at",
        "reason",
        "totals",
        "queues",
        "jobs",
        "workers",
        "worker_count",
    }
    assert body["paused"] is False
    assert body["totals"] == {"waiting": 2, "active": 0, "delayed": 0, "completed": 0, "failed": 0}
    assert [q["name"] for q in body["queues"]] == ["ai-high", "ai-default", "ai-low"]
    assert body["jobs"]["queued"] == len(jobs)


def test_staff_pauses_and_resumes(staff_api, redis_conn):
    response = staff_api.post("/api/ai/queue/pause", {"reason": "deploying provider keys"}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["paused"] is True and body["paused_by"] == "ops" and body["reason"] == "deploying provider keys"
    assert body["paused_at"] and is_suspended(redis_conn)
    assert staff_api.get("/api/ai/queue").json()["paused"] is True

    # pausing again is not an error and keeps the first pause's details
    again = staff_api.post("/api/ai/queue/pause", format="json").json()
    assert again["paused_at"] == body["paused_at"] and again["reason"] == body["reason"]

    response = staff_api.post("/api/ai/queue/resume", format="json")
    assert response.status_code == 200
    assert response.json()["paused"] is False and not is_suspended(redis_conn)
    assert staff_api.post("/api/ai/queue/resume").status_code == 200  # idempotent


@pytest.mark.parametrize(
    "method, url",
    [("get", "/api/ai/queue"), ("post", "/api/ai/queue/pause"), ("post", "/api/ai/queue/resume")],
)
def test_owners_and_anonymous_are_refused_and_nothing_changes(api, anon_api, method, url, redis_conn):
    queue_status()  # a read: nothing to change
    response = getattr(api, method)(url, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_denied"
    response = getattr(anon_api, method)(url, format="json")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "not_authenticated"
    assert not is_suspended(redis_conn)


def test_non_staff_cannot_resume_a_pause(api, staff_api, redis_conn):
    staff_api.post("/api/ai/queue/pause", format="json")
    assert api.post("/api/ai/queue/resume", format="json").status_code == 403
    assert is_suspended(redis_conn)


@pytest.mark.parametrize(
    "body, message",
    [
        ({"reason": "x" * 501}, "reason"),
        ({"reason": "ok", "until": "tomorrow"}, "until: unknown field"),
        ({"reason": ["a", "list"]}, "reason"),
        ([1, 2], None),
    ],
)
def test_bad_pause_bodies_are_400_and_do_not_pause(staff_api, redis_conn, body, message):
    response = staff_api.post("/api/ai/queue/pause", body, format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "validation_error"
    if message:
        assert message in error["message"]
    assert not is_suspended(redis_conn)


def test_resume_with_a_body_or_unknown_query_params_is_400(staff_api, redis_conn):
    staff_api.post("/api/ai/queue/pause", format="json")
    response = staff_api.post("/api/ai/queue/resume", {"force": True}, format="json")
    assert response.status_code == 400 and response.json()["error"]["type"] == "validation_error"
    assert is_suspended(redis_conn)
    response = staff_api.get("/api/ai/queue?verbose=1")
    assert response.status_code == 400 and "verbose: unknown field" in response.json()["error"]["message"]


def test_malformed_json_is_400(staff_api, redis_conn):
    response = staff_api.post("/api/ai/queue/pause", data="{not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["type"] == "parse_error"
    assert not is_suspended(redis_conn)
