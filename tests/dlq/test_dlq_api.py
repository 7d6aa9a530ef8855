"""The DLQ API: staff only, strict input, clear 4xx, nothing changed by a refused request."""

from __future__ import annotations

import threading

import pytest
from django.db import connections

from aipb.exceptions import Conflict
from dlq.models import DeadLetter
from dlq.services import dlq_retry
from jobs import actions
from jobs.models import AIJob, JobStatus
from jobs.queues import all_queues


def snapshot() -> list:
    """Everything a refused request must leave alone."""
    return [
        list(DeadLetter.objects.order_by("id").values_list("id", "status", "resolved_at")),
        list(AIJob.objects.order_by("id").values_list("id", "status", "attempts", "deliveries")),
        sum(queue.count for queue in all_queues()),
    ]


def assert_error(response, status: int, error_type: str) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "details"}
    assert body["error"]["type"] == error_type and body["error"]["message"]
    return body["error"]


def endpoints(entry_id: int) -> list[tuple[str, str, dict | None]]:
    return [
        ("get", "/api/ai/dlq", None),
        ("get", "/api/ai/dlq/stats", None),
        ("post", f"/api/ai/dlq/{entry_id}/retry", None),
        ("post", f"/api/ai/dlq/{entry_id}/discard", None),
        ("post", "/api/ai/dlq/retry", {}),
    ]


@pytest.mark.django_db(transaction=True)
def test_anonymous_is_401_and_non_staff_is_403_on_every_endpoint(kill, user, anon_api, api, staff_api):
    entry = kill(user)
    before = snapshot()
    for method, url, body in endpoints(entry.id):
        assert_error(getattr(anon_api, method)(url, body, format="json"), 401, "not_authenticated")
        assert_error(getattr(api, method)(url, body, format="json"), 403, "permission_denied")
    assert snapshot() == before
    # the owner of the job is not staff either: the DLQ is an operator's tool
    assert AIJob.objects.get(id=entry.job_uuid).owner == user


@pytest.mark.django_db(transaction=True)
def test_staff_reach_every_endpoint(kill, user, staff_api):
    entry = kill(user)
    other = kill(user)
    assert staff_api.get("/api/ai/dlq").status_code == 200
    assert staff_api.get("/api/ai/dlq/stats").status_code == 200
    assert staff_api.post(f"/api/ai/dlq/{entry.id}/retry").status_code == 202
    assert staff_api.post(f"/api/ai/dlq/{other.id}/discard").status_code == 200
    assert staff_api.post("/api/ai/dlq/retry", {}, format="json").status_code == 202


def test_list_is_newest_first_filtered_and_paginated(kill, user, staff_api):
    auth = kill(user, error="auth")
    model = kill(user, error="model_not_found", model="sim-large")
    flaky = kill(user, error="unavailable")
    staff_api.post(f"/api/ai/dlq/{model.id}/discard")

    def ids(**params):
        body = staff_api.get("/api/ai/dlq", params).json()
        return [row["id"] for row in body["results"]]

    assert ids() == [flaky.id, model.id, auth.id]
    assert ids(error_type="AUTH_ERROR") == [auth.id]
    assert ids(status="open") == [flaky.id, auth.id]
    assert ids(status="discarded") == [model.id]
    assert ids(retryable="true") == [flaky.id]
    assert ids(retryable="false") == [model.id, auth.id]
    assert ids(provider="simulated", model="sim-large") == [model.id]
    assert ids(provider="local") == []
    assert ids(limit=1, offset=1) == [model.id]
    page = staff_api.get("/api/ai/dlq", {"limit": 2}).json()
    assert page["count"] == 3 and page["next"] and page["previous"] is None


@pytest.mark.parametrize(
    "params",
    [
        {"status": "bogus"},
        {"status": "OPEN"},
        {"error_type": "NOPE"},
        {"provider": "acme"},
        {"retryable": "maybe"},
        {"model": "m" * 201},
        {"limit": "0"},
        {"limit": "501"},
        {"limit": "ten"},
        {"offset": "-1"},
        {"colour": "red"},
    ],
)
def test_bad_list_filters_are_400(staff_api, params, db):
    error = assert_error(staff_api.get("/api/ai/dlq", params), 400, "validation_error")
    assert next(iter(params)) in error["details"]


@pytest.mark.django_db(transaction=True)
def test_retry_and_discard_of_an_unknown_entry_are_404_and_change_nothing(kill, user, staff_api):
    entry = kill(user)
    before = snapshot()
    for action in ("retry", "discard"):
        error = assert_error(staff_api.post(f"/api/ai/dlq/{entry.id + 1000}/{action}"), 404, "not_found")
        assert error["message"] == f"dead letter {entry.id + 1000} not found"
        assert_error(staff_api.post(f"/api/ai/dlq/{2**70}/{action}"), 404, "not_found")
        assert_error(staff_api.post(f"/api/ai/dlq/abc/{action}"), 404, "not_found")
        assert_error(staff_api.post(f"/api/ai/dlq/-1/{action}"), 404, "not_found")
    assert snapshot() == before


def test_retry_of_an_entry_whose_job_was_deleted_is_409_and_the_entry_keeps_its_job_id(kill, user, staff_api):
    entry = kill(user)
    actions.job_delete(job_id=entry.job_uuid)
    assert not AIJob.objects.filter(id=entry.job_uuid).exists()
    before = snapshot()

    error = assert_error(staff_api.post(f"/api/ai/dlq/{entry.id}/retry"), 409, "conflict")

    assert error["message"] == (
        f"dead letter {entry.id} cannot be retried: its job {entry.job_uuid} was deleted; discard the entry instead"
    )
    assert snapshot() == before
    [row] = staff_api.get("/api/ai/dlq").json()["results"]
    assert row["job_id"] == str(entry.job_uuid) and row["status"] == "open"
    # bulk retry skips it, and discarding it still works
    assert staff_api.post("/api/ai/dlq/retry", {}, format="json").json() == {"retried": 0, "skipped": 1}
    assert staff_api.post(f"/api/ai/dlq/{entry.id}/discard").json()["status"] == "discarded"


def test_discard_returns_the_entry_and_only_open_entries_can_be_discarded_or_retried(kill, user, staff_api):
    entry = kill(user)

    response = staff_api.post(f"/api/ai/dlq/{entry.id}/discard")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == entry.id and body["status"] == "discarded" and body["resolved_at"] is not None
    assert body["job_id"] == str(entry.job_uuid) and body["error_type"] == "AUTH_ERROR"
    job = AIJob.objects.get(id=entry.job_uuid)
    assert job.status == JobStatus.DEAD  # the job stays dead
    before = snapshot()
    error = assert_error(staff_api.post(f"/api/ai/dlq/{entry.id}/discard"), 409, "conflict")
    assert error["message"] == f"dead letter {entry.id} is discarded; only open entries can be discarded"
    assert_error(staff_api.post(f"/api/ai/dlq/{entry.id}/retry"), 409, "conflict")
    assert snapshot() == before


def test_retrying_the_job_through_the_jobs_api_resolves_its_entry(kill, user, staff_api):
    entry = kill(user)
    assert staff_api.post(f"/api/ai/jobs/{entry.job_uuid}/retry").status_code == 202
    entry.refresh_from_db()
    assert entry.status == "retried"
    assert_error(staff_api.post(f"/api/ai/dlq/{entry.id}/retry"), 409, "conflict")


@pytest.mark.parametrize(
    "body",
    [
        {"status": "open"},  # not a bulk filter: bulk retry always means open entries
        {"error_type": "NOPE"},
        {"provider": "acme"},
        {"retryable": "perhaps"},
        {"model": ["sim-small"]},
        {"everything": True},
        ["AUTH_ERROR"],
    ],
)
def test_bad_bulk_retry_bodies_are_400_and_change_nothing(kill, user, staff_api, body):
    kill(user)
    before = snapshot()
    assert_error(staff_api.post("/api/ai/dlq/retry", body, format="json"), 400, "validation_error")
    assert snapshot() == before


def test_bulk_retry_rejects_a_body_that_is_not_json(staff_api, db):
    response = staff_api.post("/api/ai/dlq/retry", "{not json", content_type="application/json")
    assert_error(response, 400, "parse_error")


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_retries_of_one_entry_queue_the_job_once(kill, user):
    for _ in range(5):
        entry = kill(user)
        deliveries = AIJob.objects.get(id=entry.job_uuid).deliveries
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def retry(entry=entry, barrier=barrier, outcomes=outcomes):
            barrier.wait()
            try:
                dlq_retry(entry_id=entry.id)
                outcomes.append("retried")
            except Conflict:
                outcomes.append("conflict")
            finally:
                connections.close_all()

        threads = [threading.Thread(target=retry) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["conflict", "retried"]
        job = AIJob.objects.get(id=entry.job_uuid)
        assert job.status == JobStatus.QUEUED and job.deliveries == deliveries + 1
