"""The jobs API: submit, list, detail, retry, cancel, delete; idempotency; every bad input."""

from __future__ import annotations

import json
import uuid

import pytest
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from jobs import transitions
from jobs.models import AIJob, JobStatus

pytestmark = pytest.mark.django_db(transaction=True)

JOBS = "/api/ai/jobs"
SIM = {"prompt": "x", "provider": "simulated", "model": "sim-small"}


def assert_error(response, status: int, error_type: str | None = None) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "details"}, body
    assert body["error"]["message"]
    if error_type:
        assert body["error"]["type"] == error_type, body
    return body["error"]


def test_submit_returns_the_job_and_detail_shows_it(api, redis_conn):
    response = api.post(JOBS, {"prompt": "A page for a dentist"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "queued" and body["provider"] == "local" and body["model"] == "local-page"
    assert body["owner"] == "alice" and body["attempts"] == 0 and body["max_attempts"] == 3
    assert body["attempt_history"] == [] and body["result"] is None
    detail = api.get(f"{JOBS}/{body['id']}").json()
    expected_keys = {
        "id", "status", "provider", "model", "priority", "prompt", "options", "attempts", "max_attempts", "result",
        "error_type", "error_message", "created_at", "started_at", "finished_at", "next_attempt_at", "owner",
        "attempt_history",
    }  # fmt: skip
    assert expected_keys <= set(detail)


def test_completed_job_detail_has_page_and_attempts(api, run_worker):
    job_id = api.post(JOBS, {"prompt": "A page for a dentist"}, format="json").json()["id"]
    run_worker()
    detail = api.get(f"{JOBS}/{job_id}").json()
    assert detail["status"] == "succeeded"
    assert detail["result"]["title"] and detail["result"]["sections"]
    [attempt] = detail["attempt_history"]
    assert attempt["number"] == 1 and attempt["outcome"] == "succeeded" and attempt["latency_ms"] is not None
    assert attempt["prompt_tokens"] > 0 and attempt["completion_tokens"] > 0 and attempt["cached_tokens"] == 0


def test_token_auth_end_to_end(anon_api, user, redis_conn):
    response = anon_api.post("/api/auth/token", {"username": "alice", "password": "correct-horse-battery"})
    assert response.status_code == 200
    token = response.json()["token"]
    assert Token.objects.get(user=user).key == token
    anon_api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert anon_api.post(JOBS, {"prompt": "hi"}, format="json").status_code == 201


def test_idempotency_key(api, redis_conn):
    body = {"prompt": "Same page", "priority": "low"}
    first = api.post(JOBS, body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = api.post(JOBS, body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert AIJob.objects.count() == 1
    conflict = api.post(JOBS, {"prompt": "Other page"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert_error(conflict, 409, "conflict")
    assert AIJob.objects.count() == 1


def test_idempotency_key_is_per_owner(api, other_user, redis_conn):
    other = APIClient()
    other.force_authenticate(other_user)
    a = api.post(JOBS, {"prompt": "x"}, format="json", HTTP_IDEMPOTENCY_KEY="shared")
    b = other.post(JOBS, {"prompt": "x"}, format="json", HTTP_IDEMPOTENCY_KEY="shared")
    assert a.status_code == b.status_code == 201 and a.json()["id"] != b.json()["id"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 20_001}, "prompt"),
        ({"prompt": "a\x00b"}, "NUL"),
        ({"prompt": "x", "provider": "cohere"}, "provider"),
        ({"prompt": "x", "provider": "openai"}, "not configured"),
        ({"prompt": "x", "model": "gpt-5-ultra"}, "unknown model"),
        ({"prompt": "x", "provider": "simulated", "model": "local-page"}, "unknown model"),
        ({"prompt": "x", "priority": "urgent"}, "priority"),
        ({"prompt": "x", "max_attempts": 0}, "max_attempts"),
        ({"prompt": "x", "max_attempts": 11}, "max_attempts"),
        ({"prompt": "x", "max_attempts": "three"}, "max_attempts"),
        ({"prompt": "x", "colour": "blue"}, "colour"),
        ({"prompt": "x", "options": "not-an-object"}, "options"),
        ({"prompt": "x", "options": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}}, "nest"),
        ({"prompt": "x", "options": {"blob": "y" * 20_000}}, "bytes"),
        ({"prompt": 12345}, "must be a string"),  # JSON types are exact (aipb.api.parse_body)
        ({"prompt": "x", "options": {"simulate": {"error": "rate_limit"}}}, "simulate"),
        ({**SIM, "options": {"simulate": {"error": "boom"}}}, "error"),
        ({**SIM, "options": {"simulate": {"latency_ms": -1}}}, "latency"),
        ({**SIM, "options": {"simulate": {"wat": 1}}}, "unknown"),
    ],
)
def test_bad_submissions_are_400_and_write_nothing(api, redis_conn, body, fragment):
    response = api.post(JOBS, body, format="json")
    error = assert_error(response, 400)
    if fragment:
        assert fragment.lower() in json.dumps(error).lower(), error
    assert AIJob.objects.count() == 0
    # nothing enqueued: the only key is the submission throttle's count (the cache lives in Redis)
    assert [key for key in redis_conn.keys("*") if not key.startswith(b"aipb-cache:")] == []


def test_simulated_provider_refused_unless_enabled(api, settings, redis_conn):
    settings.AI_ENABLE_SIMULATED_PROVIDER = False
    error = assert_error(api.post(JOBS, {"prompt": "x", "provider": "simulated"}, format="json"), 400)
    assert "not configured" in error["message"]
    assert AIJob.objects.count() == 0


def test_malformed_json_and_wrong_content_type(api, redis_conn):
    assert_error(api.post(JOBS, "{not json", content_type="application/json"), 400, "parse_error")
    assert_error(api.post(JOBS, "prompt=x", content_type="application/x-www-form-urlencoded"), 415)
    assert AIJob.objects.count() == 0


def test_oversized_body_is_413(api, redis_conn):
    body = json.dumps({"prompt": "x", "options": {"pad": "y" * 1_100_000}})
    assert_error(api.post(JOBS, body, content_type="application/json"), 413, "request_too_large")
    assert AIJob.objects.count() == 0


def test_unauthenticated_is_401(anon_api, db):
    assert_error(anon_api.get(JOBS), 401, "not_authenticated")
    assert_error(anon_api.post(JOBS, {"prompt": "x"}, format="json"), 401)
    assert AIJob.objects.count() == 0


def test_bad_token_is_401(anon_api, db):
    anon_api.credentials(HTTP_AUTHORIZATION="Token nope")
    assert_error(anon_api.get(JOBS), 401, "authentication_failed")


def test_unknown_api_url_is_json_404(api):
    assert_error(api.get("/api/ai/nothing-here"), 404, "not_found")
    assert_error(api.get(f"{JOBS}/not-a-uuid"), 404, "not_found")
    assert_error(api.get(f"{JOBS}/{uuid.uuid4()}"), 404, "not_found")


def test_owners_see_only_their_jobs_and_staff_see_all(api, staff_api, other_user, redis_conn):
    mine = api.post(JOBS, {"prompt": "mine"}, format="json").json()["id"]
    other = APIClient()
    other.force_authenticate(other_user)
    theirs = other.post(JOBS, {"prompt": "theirs"}, format="json").json()["id"]

    listed = api.get(JOBS).json()
    assert listed["count"] == 1 and [j["id"] for j in listed["results"]] == [mine]
    assert_error(api.get(f"{JOBS}/{theirs}"), 404)
    assert_error(api.post(f"{JOBS}/{theirs}/cancel"), 404)
    assert_error(api.delete(f"{JOBS}/{theirs}"), 404)
    assert AIJob.objects.get(id=theirs).status == JobStatus.QUEUED
    assert {j["id"] for j in staff_api.get(JOBS).json()["results"]} == {mine, theirs}


def test_list_filters_and_pagination(api, user, redis_conn):
    user.user_permissions.add(Permission.objects.get(codename="submit_high_priority"))
    for i in range(5):
        api.post(JOBS, {"prompt": f"p{i}", "priority": "high" if i % 2 else "low"}, format="json")
    page = api.get(JOBS, {"limit": 2, "offset": 1}).json()
    assert page["count"] == 5 and len(page["results"]) == 2 and page["next"] and page["previous"]
    assert api.get(JOBS, {"priority": "high"}).json()["count"] == 2
    assert api.get(JOBS, {"status": "queued", "provider": "local", "model": "local-page"}).json()["count"] == 5
    assert api.get(JOBS, {"error_type": "TIMEOUT"}).json()["count"] == 0


@pytest.mark.parametrize(
    "params",
    [
        {"status": "exploded"},
        {"provider": "x"},
        {"priority": "mid"},
        {"error_type": "NOPE"},
        {"limit": 0},
        {"limit": 100000},
        {"limit": "ten"},
        {"offset": -1},
        {"status": "queued' OR 1=1 --"},
        {"surprise": "1"},
    ],
)
def test_bad_list_filters_are_400(api, params):
    assert_error(api.get(JOBS, params), 400, "validation_error")


def test_cancel_retry_delete_state_rules(api, run_worker, redis_conn):
    job_id = api.post(JOBS, {"prompt": "x"}, format="json").json()["id"]
    assert_error(api.post(f"{JOBS}/{job_id}/retry"), 409, "conflict")  # queued: nothing to retry
    canceled = api.post(f"{JOBS}/{job_id}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert_error(api.post(f"{JOBS}/{job_id}/cancel"), 409)
    assert redis_conn.exists(f"rq:job:{job_id}") == 0, "the RQ job is removed on cancel"

    retried = api.post(f"{JOBS}/{job_id}/retry")
    assert retried.status_code == 202 and retried.json()["status"] == "queued"
    run_worker()
    assert api.get(f"{JOBS}/{job_id}").json()["status"] == "succeeded"
    assert_error(api.post(f"{JOBS}/{job_id}/cancel"), 409)
    assert api.delete(f"{JOBS}/{job_id}").status_code == 204
    assert not AIJob.objects.filter(id=job_id).exists()


def test_delete_of_a_running_job_is_409(api, user, redis_conn):
    job_id = api.post(JOBS, {"prompt": "x"}, format="json").json()["id"]
    job = AIJob.objects.get(id=job_id)
    assert transitions.job_claim(job_id=job_id, rq_job_id=job.rq_job_id) is not None
    assert_error(api.delete(f"{JOBS}/{job_id}"), 409)
    assert AIJob.objects.filter(id=job_id, status="running").exists()


def test_retry_of_a_dead_job_grants_a_fresh_budget(api, run_worker):
    sim = {"fail_attempts": 2, "error": "server_error"}
    body = {**SIM, "options": {"simulate": sim}, "max_attempts": 1}
    job_id = api.post(JOBS, body, format="json").json()["id"]
    run_worker()
    assert api.get(f"{JOBS}/{job_id}").json()["status"] == "dead"
    api.post(f"{JOBS}/{job_id}/retry")
    run_worker()
    dead_again = api.get(f"{JOBS}/{job_id}").json()
    assert dead_again["status"] == "dead" and dead_again["attempts"] == 2  # attempt 2 still fails (lifetime count)
    api.post(f"{JOBS}/{job_id}/retry")
    run_worker()
    done = api.get(f"{JOBS}/{job_id}").json()
    assert done["status"] == "succeeded" and done["attempts"] == 3
    assert [a["outcome"] for a in done["attempt_history"]] == ["failed", "failed", "succeeded"]


def test_openapi_schema_and_docs(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    assert "/api/ai/jobs" in schema.json()["paths"]
    assert api.get("/api/docs/").status_code == 200


def test_version_endpoint(anon_api):
    body = anon_api.get("/api/version").json()
    assert set(body) == {"version", "commit", "build_date"}
