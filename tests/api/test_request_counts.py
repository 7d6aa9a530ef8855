"""What one request of the jobs API costs in round trips (issue 23): SQL statements, Postgres round trips and
transactions, Redis round trips, counted at the client libraries as bench.api counts them. Counts, never
timings. Django's test client skips the connection health check a server runs first in each request (one
``SELECT 1`` more on the wire in gunicorn; bench.api counts it)."""

from __future__ import annotations

import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from bench.counting import Counter
from jobs.models import AIJob, JobAttempt

pytestmark = pytest.mark.django_db(transaction=True)  # autocommit, on_commit runs: as in production

JOBS = "/api/ai/jobs"
BODY = {"prompt": "A page about counting", "provider": "simulated", "model": "sim-small"}


@pytest.fixture
def client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def counted(call):
    with Counter(keep_log=True) as c:
        response = call()
    return response, c.counts


def test_a_submission_is_four_statements_each_its_own_transaction_and_two_redis_round_trips(client, redis_conn):
    client.post(JOBS, BODY, format="json")  # the first request of a process builds what it keeps
    response, counts = counted(lambda: client.post(JOBS, BODY, format="json"))

    assert response.status_code == 201, response.content
    # the token (and its user) in one statement, the owner's waiting jobs counted (AI_USER_MAX_QUEUED, bounded by
    # LIMIT), the owner's limits and spend in one (usage.budgets), the row in one INSERT committed on its own: no
    # BEGIN, no COMMIT
    assert counts.sql == 4
    assert counts.pg_log == ["SELECT (autocommit)"] * 3 + ["INSERT (autocommit)"]
    assert counts.pg_round_trips == 4 and counts.transactions == 4
    # the throttle (one Lua script), then RQ's enqueue: the queue's registration, then the job and the push
    assert counts.redis_round_trips == 2
    job = AIJob.objects.get(id=response.json()["id"])  # committed before the answer
    assert redis_conn.exists(f"rq:job:{job.rq_job_id}")
    assert job.rq_job_id.encode() in redis_conn.lrange("rq:queue:ai-default", 0, -1)


def test_a_submission_with_an_idempotency_key_reads_first_and_uses_no_savepoint(client, redis_conn):
    client.post(JOBS, BODY, format="json")
    response, counts = counted(lambda: client.post(JOBS, BODY, format="json", HTTP_IDEMPOTENCY_KEY="count-1"))
    assert response.status_code == 201
    assert counts.sql == 5  # the token, the key's row, the waiting jobs, the owner's limits, the INSERT
    assert counts.pg_log == ["SELECT (autocommit)"] * 4 + ["INSERT (autocommit)"]
    assert counts.redis_round_trips == 2

    replay, counts = counted(lambda: client.post(JOBS, BODY, format="json", HTTP_IDEMPOTENCY_KEY="count-1"))
    assert replay.status_code == 200 and replay.json()["id"] == response.json()["id"]
    # the token, the existing row, the job as it is now; the throttle counts it; nothing enqueued again
    assert counts.sql == 3 and counts.pg_log == ["SELECT (autocommit)"] * 3
    assert counts.redis_round_trips == 1


def test_a_throttled_submission_reads_the_token_and_asks_redis_once(client, redis_conn, monkeypatch):
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"submit": "1/min"})
    assert client.post(JOBS, BODY, format="json").status_code == 201
    response, counts = counted(lambda: client.post(JOBS, BODY, format="json"))
    assert response.status_code == 429
    assert counts.sql == 1 and counts.redis_round_trips == 1
    assert AIJob.objects.count() == 1


def test_reading_a_job_that_has_not_run_is_two_statements(client, redis_conn):
    job_id = client.post(JOBS, BODY, format="json").json()["id"]
    client.get(f"{JOBS}/{job_id}")
    response, counts = counted(lambda: client.get(f"{JOBS}/{job_id}"))
    assert response.status_code == 200 and response.json()["attempt_history"] == []
    assert counts.sql == 2 and counts.pg_log == ["SELECT (autocommit)"] * 2
    assert counts.redis_round_trips == 0


def test_reading_a_job_that_has_run_reads_its_attempts_too(client, redis_conn):
    job_id = client.post(JOBS, BODY, format="json").json()["id"]
    now = timezone.now()
    AIJob.objects.filter(id=job_id).update(attempts=1)
    JobAttempt.objects.create(job_id=job_id, number=1, started_at=now, finished_at=now, outcome="failed")
    response, counts = counted(lambda: client.get(f"{JOBS}/{job_id}"))
    assert response.status_code == 200 and [a["number"] for a in response.json()["attempt_history"]] == [1]
    assert counts.sql == 3 and counts.redis_round_trips == 0
