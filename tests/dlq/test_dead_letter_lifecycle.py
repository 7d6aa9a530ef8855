"""Dead letters end to end with a real forking RQ worker: capture, retry to success, retention, bulk retry, stats."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from dlq.models import DeadLetter
from jobs.models import AIJob, JobAttempt, JobStatus
from jobs.queues import all_queues
from tests.dlq.conftest import submit_failing

pytestmark = pytest.mark.django_db(transaction=True)


def rq_job_count() -> int:
    return sum(queue.count for queue in all_queues())


def test_retryable_error_exhausting_its_attempts_leaves_exactly_one_entry(user, staff_api, run_worker):
    job = submit_failing(user, error="unavailable", fail_attempts=3, max_attempts=3, prompt="Page for a <b>café</b>")

    run_worker()

    job.refresh_from_db()
    assert job.status == JobStatus.DEAD and job.attempts == 3
    [entry] = DeadLetter.objects.filter(job_uuid=job.id)
    assert (entry.error_type, entry.retryable, entry.attempts, entry.status) == ("SERVICE_UNAVAILABLE", True, 3, "open")
    assert (entry.provider, entry.model, entry.job_id) == ("simulated", "sim-small", job.id)
    assert entry.payload["job"]["prompt"] == "Page for a <b>café</b>"
    assert entry.payload["job"]["options"] == {"simulate": {"fail_attempts": 3, "error": "unavailable"}}
    history = entry.payload["attempt_history"]
    assert [(a["number"], a["outcome"], a["error_type"]) for a in history] == [
        (1, "failed", "SERVICE_UNAVAILABLE"),
        (2, "failed", "SERVICE_UNAVAILABLE"),
        (3, "failed", "SERVICE_UNAVAILABLE"),
    ]

    body = staff_api.get("/api/ai/dlq").json()
    assert body["count"] == 1
    [row] = body["results"]
    assert set(row) == {
        "id", "job_id", "error_type", "error_message", "retryable", "attempts",
        "provider", "model", "status", "created_at", "resolved_at",
    }  # fmt: skip
    assert row["id"] == entry.id and row["job_id"] == str(job.id)
    assert row["error_message"] == "simulated: service unavailable" and row["resolved_at"] is None


def test_non_retryable_error_leaves_exactly_one_entry_after_one_attempt(user, staff_api, run_worker):
    job = submit_failing(user, error="model_not_found", fail_attempts=5, max_attempts=3)

    run_worker()

    job.refresh_from_db()
    assert job.status == JobStatus.DEAD and job.attempts == 1
    [row] = staff_api.get("/api/ai/dlq").json()["results"]
    assert (row["job_id"], row["error_type"], row["retryable"], row["attempts"]) == (
        str(job.id),
        "MODEL_ERROR",
        False,
        1,
    )


def test_retry_from_the_dlq_runs_the_job_to_success_and_a_second_retry_is_409(user, staff_api, run_worker):
    # fail_attempts counts lifetime attempts: attempts 1-3 fail (the whole budget), attempt 4 succeeds
    job = submit_failing(user, error="unavailable", fail_attempts=3, max_attempts=3)
    run_worker()
    entry = DeadLetter.objects.get(job_uuid=job.id)

    response = staff_api.post(f"/api/ai/dlq/{entry.id}/retry")

    assert response.status_code == 202, response.content
    assert response.json() == {"dlq_id": entry.id, "job_id": str(job.id), "status": "queued"}
    entry.refresh_from_db()
    assert entry.status == "retried" and entry.resolved_at is not None
    assert rq_job_count() == 1

    run_worker()

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 4 and job.result is not None
    assert list(JobAttempt.objects.filter(job=job).values_list("number", "outcome")) == [
        (1, "failed"),
        (2, "failed"),
        (3, "failed"),
        (4, "succeeded"),
    ]
    assert staff_api.get("/api/ai/dlq", {"status": "open"}).json()["count"] == 0
    assert DeadLetter.objects.filter(job_uuid=job.id).count() == 1

    again = staff_api.post(f"/api/ai/dlq/{entry.id}/retry")

    assert again.status_code == 409
    assert again.json()["error"]["type"] == "conflict"
    assert again.json()["error"]["message"] == f"dead letter {entry.id} is retried; only open entries can be retried"
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 4
    assert rq_job_count() == 0


def test_a_job_that_dies_again_after_a_retry_gets_a_new_entry(user, staff_api, run_worker):
    job = submit_failing(user, error="server_error", fail_attempts=10, max_attempts=2)
    run_worker()
    first = DeadLetter.objects.get(job_uuid=job.id)
    assert staff_api.post(f"/api/ai/dlq/{first.id}/retry").status_code == 202

    run_worker()

    job.refresh_from_db()
    assert job.status == JobStatus.DEAD and job.attempts == 4  # a fresh budget of 2 more attempts
    first.refresh_from_db()
    second = DeadLetter.objects.exclude(id=first.id).get(job_uuid=job.id)
    assert first.status == "retried" and second.status == "open"
    assert second.attempts == 4 and second.error_type == "PROVIDER_ERROR"
    assert [a["number"] for a in second.payload["attempt_history"]] == [1, 2, 3, 4]


def test_retention_keeps_exactly_the_newest_n_and_never_deletes_jobs(user, run_worker, settings):
    settings.AI_DLQ_MAX_ENTRIES = 3
    jobs = [submit_failing(user, error="auth", prompt=f"page {i}") for i in range(5)]

    run_worker()

    assert AIJob.objects.filter(status=JobStatus.DEAD).count() == 5
    deaths = list(
        AIJob.objects.filter(id__in=[j.id for j in jobs]).order_by("finished_at").values_list("id", flat=True)
    )
    kept = list(DeadLetter.objects.order_by("created_at").values_list("job_uuid", flat=True))
    assert kept == deaths[-3:]


def test_retention_prunes_resolved_entries_before_older_open_ones(user, staff_api, run_worker, settings):
    settings.AI_DLQ_MAX_ENTRIES = 3
    first, second, third = (submit_failing(user, prompt=f"page {i}") for i in range(3))
    run_worker()
    discarded = DeadLetter.objects.get(job_uuid=second.id)
    assert staff_api.post(f"/api/ai/dlq/{discarded.id}/discard").status_code == 200

    fourth = submit_failing(user, prompt="page 4")
    run_worker()

    # over the cap by one: the discarded entry goes, although the first (open) one is older
    assert set(DeadLetter.objects.values_list("job_uuid", flat=True)) == {first.id, third.id, fourth.id}

    fifth = submit_failing(user, prompt="page 5")
    run_worker()

    # no resolved entry left: the oldest open one goes
    assert set(DeadLetter.objects.values_list("job_uuid", flat=True)) == {third.id, fourth.id, fifth.id}
    assert AIJob.objects.filter(status=JobStatus.DEAD).count() == 5


def test_retention_drops_entries_older_than_the_age_limit(user, run_worker, settings):
    settings.AI_DLQ_MAX_AGE_DAYS = 7
    old, recent = submit_failing(user, prompt="old"), submit_failing(user, prompt="recent")
    run_worker()
    DeadLetter.objects.filter(job_uuid=old.id).update(created_at=timezone.now() - timedelta(days=8))
    assert DeadLetter.objects.count() == 2

    newest = submit_failing(user, prompt="newest")
    run_worker()

    assert set(DeadLetter.objects.values_list("job_uuid", flat=True)) == {recent.id, newest.id}
    assert AIJob.objects.filter(id=old.id, status=JobStatus.DEAD).exists()


def test_bulk_retry_retries_only_the_filtered_open_entries(user, staff_api, run_worker):
    auth = [submit_failing(user, error="auth", fail_attempts=1) for _ in range(2)]
    flaky = [submit_failing(user, error="unavailable", fail_attempts=1, model="sim-large") for _ in range(3)]
    run_worker()
    already_discarded = DeadLetter.objects.get(job_uuid=flaky[2].id)
    staff_api.post(f"/api/ai/dlq/{already_discarded.id}/discard")

    response = staff_api.post(
        "/api/ai/dlq/retry", {"error_type": "SERVICE_UNAVAILABLE", "model": "sim-large"}, format="json"
    )

    assert response.status_code == 202, response.content
    assert response.json() == {"retried": 2, "skipped": 0}
    statuses = dict(DeadLetter.objects.values_list("job_uuid", "status"))
    assert statuses == {auth[0].id: "open", auth[1].id: "open", flaky[0].id: "retried", flaky[1].id: "retried",
                        flaky[2].id: "discarded"}  # fmt: skip

    run_worker()

    job_status = dict(AIJob.objects.values_list("id", "status"))
    assert [job_status[j.id] for j in flaky] == ["succeeded", "succeeded", "dead"]
    assert [job_status[j.id] for j in auth] == ["dead", "dead"]

    # nothing left to match: a second bulk retry changes nothing
    assert staff_api.post("/api/ai/dlq/retry", {"error_type": "SERVICE_UNAVAILABLE"}, format="json").json() == {
        "retried": 0,
        "skipped": 0,
    }
    # retryable=false matches the two auth entries
    assert staff_api.post("/api/ai/dlq/retry", {"retryable": False}, format="json").json() == {
        "retried": 2,
        "skipped": 0,
    }
    assert DeadLetter.objects.filter(status="open").count() == 0


def test_stats_agree_with_the_entries(user, staff_api, run_worker):
    submit_failing(user, error="auth")
    submit_failing(user, error="auth", model="sim-large")
    submit_failing(user, error="model_not_found")
    submit_failing(user, error="unavailable", fail_attempts=2, max_attempts=2, model="sim-large")
    submit_failing(user, error="invalid_json", fail_attempts=1)
    retried = submit_failing(user, error="network", fail_attempts=1)
    discarded = submit_failing(user, error="network", fail_attempts=1)
    run_worker()
    staff_api.post(f"/api/ai/dlq/{DeadLetter.objects.get(job_uuid=retried.id).id}/retry")
    staff_api.post(f"/api/ai/dlq/{DeadLetter.objects.get(job_uuid=discarded.id).id}/discard")

    stats = staff_api.get("/api/ai/dlq/stats").json()

    every = staff_api.get("/api/ai/dlq", {"limit": 500}).json()["results"]
    open_ = [e for e in every if e["status"] == "open"]
    assert stats == {
        "total": len(every),
        "open": len(open_),
        "retryable": sum(e["retryable"] for e in open_),
        "non_retryable": sum(not e["retryable"] for e in open_),
        "by_error_type": dict(Counter(e["error_type"] for e in open_)),
        "by_provider": dict(Counter(e["provider"] for e in open_)),
        "by_model": dict(Counter(e["model"] for e in open_)),
        "oldest_at": min(e["created_at"] for e in open_),
        "newest_at": max(e["created_at"] for e in open_),
    }
    # and the numbers themselves, from the mix above
    assert (stats["total"], stats["open"], stats["retryable"], stats["non_retryable"]) == (7, 5, 2, 3)
    assert stats["by_error_type"] == {"AUTH_ERROR": 2, "MODEL_ERROR": 1, "SERVICE_UNAVAILABLE": 1,
                                      "VALIDATION_ERROR": 1}  # fmt: skip
    assert stats["by_provider"] == {"simulated": 5}
    assert stats["by_model"] == {"sim-small": 3, "sim-large": 2}


def test_stats_of_an_empty_queue(staff_api):
    assert staff_api.get("/api/ai/dlq/stats").json() == {
        "total": 0,
        "open": 0,
        "retryable": 0,
        "non_retryable": 0,
        "by_error_type": {},
        "by_provider": {},
        "by_model": {},
        "oldest_at": None,
        "newest_at": None,
    }
