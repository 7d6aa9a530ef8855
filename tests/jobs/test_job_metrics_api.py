"""GET /api/ai/jobs/metrics: staff only, a validated `since` window, numbers computed by the database."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs import actions
from jobs.models import JobAttempt
from tests.factories import JobAttemptFactory, submit_job

URL = "/api/ai/jobs/metrics"


def percentile_cont(values: list[int], fraction: float) -> float:
    """Postgres' percentile_cont: linear interpolation between the two nearest ranks."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def test_metrics_after_a_known_mix_of_jobs(user, staff_api, run_worker):
    submit_job(user, provider="local")  # succeeds, 1 attempt
    submit_job(user, simulate={})  # succeeds, 1 attempt
    submit_job(user, simulate={"fail_attempts": 2, "error": "unavailable"}, max_attempts=3)  # 2 failures, then success
    submit_job(user, simulate={"fail_attempts": 1, "error": "auth"})  # dead after 1 attempt
    submit_job(user, simulate={"fail_attempts": 5, "error": "invalid_page"}, max_attempts=2)  # dead: 2 invalid pages
    canceled = submit_job(user, simulate={})
    actions.job_cancel(job_id=canceled.id)
    run_worker()
    submit_job(user, provider="local")  # still queued

    response = staff_api.get(URL)

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["jobs"] == {
        "total": 7,
        "by_status": {"queued": 1, "running": 0, "retrying": 0, "succeeded": 3, "dead": 2, "canceled": 1},
    }
    assert body["success_rate"] == 0.6  # 3 succeeded / (3 succeeded + 2 dead)
    assert body["attempts"] == 8 and body["retries"] == 3
    # outputs checked against the schema: 3 valid pages, 2 invalid ones; HTTP errors had no output to check
    assert body["validation"] == {"checked": 5, "passed": 3, "pass_rate": 0.6}
    assert body["errors"] == {
        "total": 5,
        "by_type": {"AUTH_ERROR": 1, "SERVICE_UNAVAILABLE": 2, "VALIDATION_ERROR": 2},
    }
    latencies = list(JobAttempt.objects.values_list("latency_ms", flat=True))
    assert len(latencies) == 8
    assert body["processing_time_ms"] == {
        "avg": round(sum(latencies) / 8, 3),
        "p50": round(percentile_cont(latencies, 0.5), 3),
        "p95": round(percentile_cont(latencies, 0.95), 3),
        "p99": round(percentile_cont(latencies, 0.99), 3),
    }


def test_processing_time_percentiles_and_the_since_window(user, staff_api):
    now = timezone.now()
    job = submit_job(user, provider="local")
    for number, latency in enumerate([40, 10, 100, 70, 20, 90, 30, 60, 80, 50], start=1):
        JobAttemptFactory(
            job=job, number=number, started_at=now - timedelta(minutes=number), outcome="succeeded",
            latency_ms=latency, validation_passed=True,
        )  # fmt: skip
    # outside a 12 h window, inside the default 24 h one
    JobAttemptFactory(
        job=job, number=11, started_at=now - timedelta(hours=20), outcome="failed", error_type="TIMEOUT",
        latency_ms=100_000, validation_passed=None,
    )  # fmt: skip
    # outside every window asked for here
    JobAttemptFactory(
        job=job, number=12, started_at=now - timedelta(days=3), outcome="failed", error_type="TIMEOUT",
        latency_ms=900_000, validation_passed=None,
    )  # fmt: skip

    last_12h = staff_api.get(URL, {"since": "12h"}).json()

    assert last_12h["processing_time_ms"] == {"avg": 55.0, "p50": 55.0, "p95": 95.5, "p99": 99.1}
    assert last_12h["attempts"] == 10 and last_12h["retries"] == 9
    assert last_12h["errors"] == {"total": 0, "by_type": {}}
    assert last_12h["validation"] == {"checked": 10, "passed": 10, "pass_rate": 1.0}

    day = staff_api.get(URL).json()  # default: the last 24 h
    assert day["attempts"] == 11 and day["errors"] == {"total": 1, "by_type": {"TIMEOUT": 1}}
    assert day["processing_time_ms"]["p50"] == 60.0
    assert staff_api.get(URL, {"since": (now - timedelta(days=4)).isoformat()}).json()["attempts"] == 12
    assert staff_api.get(URL, {"since": "2h"}).json()["attempts"] == 10
    last_3_5_minutes = staff_api.get(URL, {"since": "210s"}).json()["processing_time_ms"]  # 40, 10, 100
    assert (last_3_5_minutes["avg"], last_3_5_minutes["p50"]) == (50.0, 40.0)
    assert staff_api.get(URL, {"since": "1440m"}).json()["attempts"] == 11


def test_an_empty_window_has_no_rates(staff_api, db):
    body = staff_api.get(URL, {"since": "90s"}).json()
    assert body["jobs"]["total"] == 0 and body["attempts"] == 0 and body["retries"] == 0
    assert body["success_rate"] is None and body["validation"]["pass_rate"] is None
    assert body["processing_time_ms"] == {"avg": None, "p50": None, "p95": None, "p99": None}


@pytest.mark.parametrize(
    "since",
    ["yesterday", "24", "0h", "-5h", "5w", "2999-01-01T00:00:00Z", "9999999d", "2026-13-45", "x" * 65, ""],
)
def test_a_bad_since_is_400(staff_api, since, db):
    response = staff_api.get(URL, {"since": since})
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["type"] == "validation_error" and "since" in error["details"]


def test_unknown_parameters_are_400(staff_api, db):
    response = staff_api.get(URL, {"window": "24h"})
    assert response.status_code == 400 and "window" in response.json()["error"]["details"]


def test_metrics_are_for_staff_only(api, anon_api):
    assert anon_api.get(URL).status_code == 401
    response = api.get(URL)
    assert response.status_code == 403 and response.json()["error"]["type"] == "permission_denied"
