"""While Redis is down a submission still answers 201 at once: the job is committed, the enqueue is skipped
(aipb.redis_client.best_effort: no retries, then a circuit), the throttle counts in Postgres, and reconcile
delivers the job once Redis is back. The outage is real for the web path: its fail-fast client is pointed at
a port nothing listens on, as when Redis is stopped."""

from __future__ import annotations

import time

import pytest
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from aipb import redis_client
from jobs.models import AIJob, JobStatus
from jobs.recovery import jobs_reconcile
from jobs.worker import AIPBSimpleWorker

JOBS = "/api/ai/jobs"
BODY = {"prompt": "a page while Redis is down", "provider": "local"}


@pytest.fixture
def client(user) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


def test_submissions_answer_201_at_once_and_run_after_redis_returns(client, redis_down, run_worker):
    started = time.monotonic()
    statuses = [client.post(JOBS, {**BODY, "prompt": f"page {n}"}, format="json").status_code for n in range(5)]
    seconds = time.monotonic() - started

    assert statuses == [201] * 5
    # before the circuit each submission waited out ~3 s of retries per Redis call (9.3-9.7 s each)
    assert seconds < 2.5, f"5 submissions took {seconds:.1f}s with Redis down"
    assert redis_client.redis_skipped()
    assert AIJob.objects.filter(status=JobStatus.QUEUED).count() == 5

    # Redis is back: reconcile delivers every job, once
    redis_down.end()
    report = jobs_reconcile(grace_seconds=0)
    assert len(report.requeued) == 5
    run_worker(worker_class=AIPBSimpleWorker)
    assert AIJob.objects.filter(status=JobStatus.SUCCEEDED).count() == 5


def test_the_throttle_counts_in_postgres_while_redis_is_down(client, redis_down, monkeypatch, user, other_user):
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"submit": "3/min"})
    assert [client.post(JOBS, BODY, format="json").status_code for _ in range(3)] == [201] * 3
    assert redis_client.redis_skipped()  # the rest are counted from the rows

    response = client.post(JOBS, BODY, format="json")

    assert response.status_code == 429
    assert response.json()["error"]["type"] == "throttled"
    assert int(response["Retry-After"]) == 60
    assert AIJob.objects.filter(owner=user).count() == 3
    other = APIClient()
    other.force_authenticate(other_user)
    assert other.post(JOBS, BODY, format="json").status_code == 201  # per user, as in Redis
