"""The batches API: create, read, its jobs, cancel; every bad input refused with nothing written."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.contrib.auth.models import Permission
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from audit.models import AuditEntry
from jobs import fairness, pipeline, transitions
from jobs.models import AIJob, Batch, JobStatus
from jobs.queues import all_queues, delivery_delete
from jobs.routing import chains
from tests.api.test_jobs_api import assert_error
from tests.factories import ModelPriceFactory
from usage import budgets
from usage.models import TokenUsage

pytestmark = pytest.mark.django_db(transaction=True)

BATCHES = "/api/ai/batches"
SIM = {"provider": "simulated", "model": "sim-small"}
KEYS = {"id", "status", "total", "counts", "cost_usd", "created_at", "finished_at", "metadata", "owner"}


def batch_body(n: int, **item) -> dict:
    return {"jobs": [{"prompt": f"page {i}", **item} for i in range(n)]}


def waiting_deliveries() -> int:
    return sum(queue.count for queue in all_queues())


def nothing_written() -> bool:
    return not Batch.objects.exists() and not AIJob.objects.exists()


def test_create_answers_201_with_the_batch_and_enqueues_every_job(api, user, redis_conn):
    user.user_permissions.add(Permission.objects.get(codename="submit_high_priority"))  # for job "b"
    body = {"jobs": [{"prompt": "a"}, {"prompt": "b", "priority": "high"}, {"prompt": "c", **SIM}]}
    response = api.post(BATCHES, {**body, "metadata": {"site": "club"}}, format="json")
    assert response.status_code == 201, response.content
    batch = response.json()
    assert set(batch) == KEYS
    assert batch["status"] == "running" and batch["total"] == 3 and batch["finished_at"] is None
    assert batch["counts"] == {"queued": 3, "running": 0, "retrying": 0, "succeeded": 0, "dead": 0, "canceled": 0}
    assert batch["metadata"] == {"site": "club"} and batch["owner"] == "alice" and batch["cost_usd"] == "0.000000"
    jobs = AIJob.objects.filter(batch_id=batch["id"])
    assert jobs.count() == 3 and {job.prompt for job in jobs} == {"a", "b", "c"}
    assert jobs.get(prompt="b").priority == "high" and jobs.get(prompt="c").provider == "simulated"
    assert waiting_deliveries() == 3
    assert {job.rq_job_id for job in jobs} == {str(job.id) for job in jobs}
    assert api.get(f"{BATCHES}/{batch['id']}").json() == batch


@pytest.mark.parametrize(
    ("item", "where"),
    [
        ({"prompt": ""}, "jobs[2]"),
        ({"prompt": "x", "priority": "urgent"}, "jobs[2]"),
        ({"prompt": "x", "max_attempts": 11}, "jobs[2]"),
        ({"prompt": "x", "colour": "red"}, "jobs[2]"),
        ({"prompt": 5}, "jobs[2]"),
        ("not an object", "jobs[2]"),
        ({"prompt": "x", "provider": "simulated", "model": "no-such-model"}, "jobs[2]"),
        ({"prompt": "x", "options": {"simulate": {"latency_ms": 1}}}, "jobs[2]"),  # simulate needs 'simulated'
        ({"prompt": "x\u0000"}, "jobs[2]"),
    ],
)
def test_a_bad_item_refuses_the_whole_batch_naming_its_index(api, redis_conn, item, where):
    body = {"jobs": [{"prompt": "fine"}, {"prompt": "fine too"}, item, {"prompt": "after"}]}
    error = assert_error(api.post(BATCHES, body, format="json"), 400)
    assert where in error["message"], error
    assert nothing_written() and waiting_deliveries() == 0


@pytest.mark.parametrize(
    "body",
    [
        {"jobs": []},
        {"jobs": "x"},
        {"jobs": {"prompt": "x"}},
        {},
        {"jobs": [{"prompt": "x"}], "metadata": "x"},
        {"jobs": [{"prompt": "x"}], "metadata": {"a": "\u0000"}},
        {"jobs": [{"prompt": "x"}], "metadata": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}},
        {"jobs": [{"prompt": "x"}], "colour": "red"},
        [],
    ],
)
def test_malformed_batches_are_refused(api, redis_conn, body):
    assert_error(api.post(BATCHES, body, format="json"), 400)
    assert nothing_written() and waiting_deliveries() == 0


def test_over_the_maximum_is_refused(api, redis_conn, settings):
    settings.AI_BATCH_MAX_JOBS = 5
    assert_error(api.post(BATCHES, batch_body(6), format="json"), 400)
    assert nothing_written()
    assert api.post(BATCHES, batch_body(5), format="json").status_code == 201


def test_the_default_maximum_is_a_thousand(api, redis_conn):
    error = assert_error(api.post(BATCHES, batch_body(1001), format="json"), 400)
    assert "1000" in error["message"]
    assert nothing_written()


def test_idempotency_key(api, other_user, redis_conn):
    body = batch_body(3)
    first = api.post(BATCHES, body, format="json", HTTP_IDEMPOTENCY_KEY="b-1")
    again = api.post(BATCHES, body, format="json", HTTP_IDEMPOTENCY_KEY="b-1")
    assert first.status_code == 201 and again.status_code == 200, again.content
    assert first.json()["id"] == again.json()["id"]
    assert Batch.objects.count() == 1 and AIJob.objects.count() == 3 and waiting_deliveries() == 3
    assert_error(api.post(BATCHES, batch_body(4), format="json", HTTP_IDEMPOTENCY_KEY="b-1"), 409, "conflict")
    assert_error(api.post(BATCHES, body, format="json", HTTP_IDEMPOTENCY_KEY="x" * 256), 400)
    assert Batch.objects.count() == 1 and AIJob.objects.count() == 3
    other = APIClient()
    other.force_authenticate(other_user)
    assert other.post(BATCHES, body, format="json", HTTP_IDEMPOTENCY_KEY="b-1").status_code == 201  # per owner


def test_every_job_counts_against_the_submission_throttle(api, redis_conn, monkeypatch):
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"submit": "10/min"})
    assert api.post(BATCHES, batch_body(8), format="json").status_code == 201
    throttled = api.post(BATCHES, batch_body(3), format="json")
    assert_error(throttled, 429, "throttled")
    assert int(throttled["Retry-After"]) > 0
    assert api.post(BATCHES, batch_body(2), format="json").status_code == 201
    assert_error(api.post("/api/ai/jobs", {"prompt": "x"}, format="json"), 429)  # one budget for both
    error = assert_error(api.post(BATCHES, batch_body(11), format="json"), 400)  # could never pass
    assert "10/min" in error["message"]
    assert Batch.objects.count() == 2 and AIJob.objects.count() == 10


def test_intake_closed_refuses_batches(api, staff_api, redis_conn):
    assert staff_api.post("/api/ai/queue/intake", {"open": False}, format="json").status_code == 200
    assert_error(api.post(BATCHES, batch_body(2), format="json"), 503, "intake_closed")
    assert nothing_written()


def test_a_batch_runs_to_completed_with_counts_and_cost(api, run_worker):
    ModelPriceFactory()  # sim-small: $1 / $2 per million input / output tokens
    simulate = {"prompt_tokens": 1000, "completion_tokens": 500}
    body = {
        "jobs": [
            *({"prompt": f"ok {i}", **SIM, "options": {"simulate": simulate}} for i in range(4)),
            {"prompt": "dies", **SIM, "options": {"simulate": {"fail_attempts": 5, "error": "auth"}}},
        ]
    }
    batch_id = api.post(BATCHES, body, format="json").json()["id"]
    run_worker()
    batch = api.get(f"{BATCHES}/{batch_id}").json()
    assert batch["status"] == "completed" and batch["finished_at"] is not None
    assert batch["counts"] == {"queued": 0, "running": 0, "retrying": 0, "succeeded": 4, "dead": 1, "canceled": 0}
    expected = sum(TokenUsage.objects.filter(job__batch_id=batch_id).values_list("cost", flat=True), Decimal(0))
    assert expected == 4 * (Decimal(1000) / 10**6 + 2 * Decimal(500) / 10**6)
    assert Decimal(batch["cost_usd"]) == expected


def test_cancel_mid_batch_cancels_what_has_not_started(api, run_worker):
    body = {"jobs": [{"prompt": f"p{i}", **SIM} for i in range(6)]}
    batch_id = api.post(BATCHES, body, format="json").json()["id"]
    [first, second, *_] = AIJob.objects.filter(batch_id=batch_id).order_by("created_at")
    claimed = transitions.job_claim(job_id=first.id, rq_job_id=first.rq_job_id)
    pipeline._attempt(claimed, chains.route_attempt(job=claimed), limits=[])  # ran to success
    running = transitions.job_claim(job_id=second.id, rq_job_id=second.rq_job_id)  # a worker holds this one
    for job in (first, second):
        delivery_delete(job.rq_job_id)  # taken off the queue by the worker that ran it
    response = api.post(f"{BATCHES}/{batch_id}/cancel")
    assert response.status_code == 200, response.content
    batch = response.json()
    assert batch["status"] == "canceled" and batch["finished_at"] is None  # one job still runs
    assert batch["counts"] == {"queued": 0, "running": 1, "retrying": 0, "succeeded": 1, "dead": 0, "canceled": 4}
    assert waiting_deliveries() == 0  # the canceled jobs' deliveries are gone
    assert_error(api.post(f"{BATCHES}/{batch_id}/cancel"), 409, "conflict")
    assert not AuditEntry.objects.exists()  # the owner canceling their own batch is not audited
    # the running job ends: the batch is finished, still canceled
    pipeline._attempt(running, chains.route_attempt(job=running), limits=[])
    batch = api.get(f"{BATCHES}/{batch_id}").json()
    assert batch["status"] == "canceled" and batch["finished_at"] is not None
    assert batch["counts"] == {"queued": 0, "running": 0, "retrying": 0, "succeeded": 2, "dead": 0, "canceled": 4}


def test_jobs_page_in_order_with_the_job_list_shape(api, redis_conn):
    batch_id = api.post(BATCHES, batch_body(7), format="json").json()["id"]
    api.post("/api/ai/jobs", {"prompt": "not in the batch"}, format="json")
    first = api.get(f"{BATCHES}/{batch_id}/jobs", {"limit": 3}).json()
    assert first["count"] == 7 and [job["prompt"] for job in first["results"]] == ["page 0", "page 1", "page 2"]
    assert set(first["results"][0]) == set(api.get("/api/ai/jobs").json()["results"][0])
    rest = api.get(f"{BATCHES}/{batch_id}/jobs", {"limit": 3, "offset": 6}).json()
    assert [job["prompt"] for job in rest["results"]] == ["page 6"] and rest["next"] is None
    assert api.get(f"{BATCHES}/{batch_id}/jobs", {"status": "running"}).json()["count"] == 0
    assert_error(api.get(f"{BATCHES}/{batch_id}/jobs", {"limit": 0}), 400)
    assert_error(api.get(f"{BATCHES}/{batch_id}/jobs", {"status": "bogus"}), 400)
    assert_error(api.get(f"{BATCHES}/{batch_id}/jobs", {"colour": "red"}), 400)


def test_list_shows_own_batches_and_staff_sees_all(api, staff_api, other_user, redis_conn):
    mine = api.post(BATCHES, batch_body(2), format="json").json()["id"]
    other = APIClient()
    other.force_authenticate(other_user)
    theirs = other.post(BATCHES, batch_body(1), format="json").json()["id"]
    assert [b["id"] for b in api.get(BATCHES).json()["results"]] == [mine]
    assert {b["id"] for b in staff_api.get(BATCHES).json()["results"]} == {mine, theirs}
    assert_error(api.get(BATCHES, {"offset": -1}), 400)


def test_another_users_batch_is_not_found_and_unchanged(api, other_user, staff_api, redis_conn):
    other = APIClient()
    other.force_authenticate(other_user)
    theirs = other.post(BATCHES, batch_body(2), format="json").json()["id"]
    for response in (
        api.get(f"{BATCHES}/{theirs}"),
        api.get(f"{BATCHES}/{theirs}/jobs"),
        api.post(f"{BATCHES}/{theirs}/cancel"),
    ):
        assert_error(response, 404, "not_found")
    assert Batch.objects.get(id=theirs).status == "running"
    assert AIJob.objects.filter(batch_id=theirs, status=JobStatus.QUEUED).count() == 2
    assert_error(api.get(f"{BATCHES}/{uuid.uuid4()}"), 404)
    assert api.get(f"{BATCHES}/not-a-uuid").status_code == 404
    # staff may cancel it, and that is audited
    assert staff_api.post(f"{BATCHES}/{theirs}/cancel").json()["status"] == "canceled"
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.target_type, entry.target_id) == ("batch.cancel", "batch", theirs)
    assert entry.details["owner"] == "bob" and entry.details["canceled"] == 2


def test_anonymous_is_refused(anon_api, user, redis_conn):
    assert anon_api.post(BATCHES, batch_body(1), format="json").status_code in (401, 403)
    assert anon_api.get(BATCHES).status_code in (401, 403)
    assert nothing_written()


# --------------------------------------------------------------------------- the per-user limits (jobs.fairness)


def test_a_high_priority_item_without_the_permission_refuses_the_batch(api, redis_conn):
    body = {"jobs": [{"prompt": "a"}, {"prompt": "b", "priority": "high"}]}
    error = assert_error(api.post(BATCHES, body, format="json"), 403, "permission_denied")
    assert error["details"]["permission"] == "jobs.submit_high_priority"
    assert nothing_written() and waiting_deliveries() == 0


def test_a_batch_that_would_pass_the_queued_cap_is_429_and_writes_nothing(api, redis_conn, settings):
    settings.AI_USER_MAX_QUEUED = 5
    assert api.post(BATCHES, batch_body(3), format="json").status_code == 201
    error = assert_error(api.post(BATCHES, batch_body(3), format="json"), 429, "too_many_queued")
    assert error["details"] == {"limit": 5, "waiting": 3, "adding": 3}
    assert Batch.objects.count() == 1 and AIJob.objects.count() == 3
    assert api.post(BATCHES, batch_body(2), format="json").status_code == 201  # exactly to the cap


def test_a_batchs_deliveries_wait_behind_the_owners_in_flight_cap(api, user, other_user, redis_conn, settings):
    fairness.overrides_forget()
    settings.AI_USER_MAX_IN_FLIGHT = 2
    try:
        assert api.post(BATCHES, batch_body(5, **SIM), format="json").status_code == 201
        other = APIClient()
        other.force_authenticate(other_user)
        assert other.post("/api/ai/jobs", {"prompt": "one page", **SIM}, format="json").status_code == 201
        # two of the batch on the queue, three held outside it; the other user's job went straight on
        assert fairness.slots_held(redis_conn, user.pk) == {"admitted": 2, "held": 3}
        assert fairness.slots_held(redis_conn, other_user.pk) == {"admitted": 1, "held": 0}
        assert waiting_deliveries() == 3
    finally:
        fairness.overrides_forget()


def test_a_batch_past_the_owners_budget_is_429_and_writes_nothing(api, user, redis_conn):
    budgets.budget_set(user=user.username, monthly_usd="0")  # a limit of 0 is reached at once
    error = assert_error(api.post(BATCHES, batch_body(2), format="json"), 429, "budget_exceeded")
    assert error["details"]["scope"] == "user"
    assert nothing_written() and waiting_deliveries() == 0
    budgets.budget_clear(user=user.username)
    assert api.post(BATCHES, batch_body(2), format="json").status_code == 201
