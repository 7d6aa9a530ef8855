"""What one request of the jobs API costs in round trips (issue 23): SQL statements, Postgres round trips and
transactions, Redis round trips, counted at the client libraries as bench.api counts them. Counts, never
timings. Django's test client skips the connection health check a server runs first in each request (one
``SELECT 1`` more on the wire in gunicorn; bench.api counts it). The hot statements are prepared on a
connection's first run of them (aipb.prepared, one PREPARE round trip once): each test counts a request after
one of its kind has run."""

from __future__ import annotations

import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from bench.counting import Counter
from jobs.models import AIJob, JobAttempt
from usage import budgets
from usage.recording import month_of
from webhooks.models import WebhookSecret

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


def test_a_submission_is_two_statements_each_its_own_transaction_and_two_redis_round_trips(client, redis_conn):
    client.post(JOBS, BODY, format="json")  # the first request of a process builds what it keeps
    response, counts = counted(lambda: client.post(JOBS, BODY, format="json"))

    assert response.status_code == 201, response.content
    # the token (and its user) in one statement; then one INSERT (jobs.admission) that reads in the same statement
    # what could refuse it: the owner's waiting jobs (AI_USER_MAX_QUEUED, bounded by LIMIT) and their limits and
    # spend (usage.budgets); committed on its own: no BEGIN, no COMMIT
    assert counts.sql == 2
    assert counts.pg_log == ["SELECT (autocommit)", "WITH (autocommit)"]
    assert counts.pg_round_trips == 2 and counts.transactions == 2
    # the throttle (one Lua script), then RQ's enqueue: the queue's registration, then the job and the push
    assert counts.redis_round_trips == 2
    job = AIJob.objects.get(id=response.json()["id"])  # committed before the answer
    assert redis_conn.exists(f"rq:job:{job.rq_job_id}")
    assert job.rq_job_id.encode() in redis_conn.lrange("rq:queue:ai-default", 0, -1)


def test_a_submission_with_an_idempotency_key_reads_the_key_in_its_insert(client, redis_conn):
    client.post(JOBS, BODY, format="json")
    response, counts = counted(lambda: client.post(JOBS, BODY, format="json", HTTP_IDEMPOTENCY_KEY="count-1"))
    assert response.status_code == 201
    assert counts.sql == 2  # the token; the INSERT, the key's row, the waiting jobs and the limits in one
    assert counts.pg_log == ["SELECT (autocommit)", "WITH (autocommit)"]
    assert counts.redis_round_trips == 2

    client.post(JOBS, BODY, format="json", HTTP_IDEMPOTENCY_KEY="count-1")  # the first replay prepares its read
    replay, counts = counted(lambda: client.post(JOBS, BODY, format="json", HTTP_IDEMPOTENCY_KEY="count-1"))
    assert replay.status_code == 200 and replay.json()["id"] == response.json()["id"]
    # the token, the statement that finds the key's row (and inserts nothing), the job as it is now; the throttle
    # counts it; nothing enqueued again
    assert counts.sql == 3 and counts.pg_log == ["SELECT (autocommit)", "WITH (autocommit)", "SELECT (autocommit)"]
    assert counts.redis_round_trips == 1
    assert AIJob.objects.count() == 2


def state(redis_conn) -> tuple:
    """What a refused submission must not change: the rows, the deliveries, the webhook secrets."""
    return (
        list(AIJob.objects.order_by("id").values_list("id", flat=True)),
        redis_conn.lrange("rq:queue:ai-default", 0, -1),
        WebhookSecret.objects.count(),
    )


@pytest.mark.parametrize("webhook", [False, True])
def test_past_the_waiting_cap_the_same_two_statements_refuse_and_write_nothing(client, redis_conn, settings, webhook):
    settings.AI_USER_MAX_QUEUED = 1
    assert client.post(JOBS, BODY, format="json").status_code == 201
    before = state(redis_conn)
    body = {**BODY, "webhook": {"url": "https://hooks.example.com/x"}} if webhook else BODY

    response, counts = counted(lambda: client.post(JOBS, body, format="json"))

    assert response.status_code == 429, response.content
    assert response.json()["error"] == {
        "type": "too_many_queued",
        "message": "you have 1 jobs waiting and may have at most 1: a job more would pass it; "
        "submit once some have started",
        "details": {"limit": 1, "waiting": 1, "adding": 1},
    }
    assert "Retry-After" not in response
    assert counts.sql == 2  # with a webhook in a transaction (BEGIN, ROLLBACK), the secret not looked for
    assert counts.redis_round_trips == 1  # the throttle; nothing enqueued
    assert state(redis_conn) == before


@pytest.mark.parametrize("webhook", [False, True])
def test_past_a_budget_the_same_two_statements_refuse_and_write_nothing(client, user, redis_conn, webhook):
    assert client.post(JOBS, BODY, format="json").status_code == 201
    budgets.budget_set(user="alice", monthly_usd="0")  # 0 spent of 0: reached
    before = state(redis_conn)
    body = {**BODY, "webhook": {"url": "https://hooks.example.com/x"}} if webhook else BODY

    response, counts = counted(lambda: client.post(JOBS, body, format="json"))

    assert response.status_code == 429, response.content
    error = response.json()["error"]
    resets_at = budgets.resets_at(month_of(timezone.now())).isoformat().replace("+00:00", "Z")
    assert error == {
        "type": "budget_exceeded",
        "message": f"the monthly budget of user 'alice' is exhausted: 0 of 0 USD spent this month; "
        f"it resets at {resets_at}",
        "details": {
            "scope": "user",
            "name": "alice",
            "limit_usd": "0",
            "spent_usd": "0",
            "soft_percent": 80,
            "resets_at": resets_at,
        },
    }
    assert 0 < int(response["Retry-After"]) <= 31 * 86400
    assert counts.sql == 2
    assert counts.redis_round_trips == 1
    assert state(redis_conn) == before


def test_the_checks_come_after_the_key_and_in_their_order(client, user, redis_conn, settings):
    """As the separate checks did: a repeated key answers its job even past the cap or the budget (409 if the
    body differs); past both, the cap is named."""
    made = client.post(JOBS, BODY, format="json", HTTP_IDEMPOTENCY_KEY="k").json()["id"]
    settings.AI_USER_MAX_QUEUED = 1
    budgets.budget_set(user="alice", monthly_usd="0")

    replay = client.post(JOBS, BODY, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert replay.status_code == 200 and replay.json()["id"] == made
    other = client.post(JOBS, {**BODY, "prompt": "another"}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert other.status_code == 409 and other.json()["error"]["type"] == "conflict"
    assert client.post(JOBS, BODY, format="json").json()["error"]["type"] == "too_many_queued"
    settings.AI_USER_MAX_QUEUED = 0  # no cap
    assert client.post(JOBS, BODY, format="json").json()["error"]["type"] == "budget_exceeded"
    budgets.budget_clear(user="alice")
    assert client.post(JOBS, BODY, format="json").status_code == 201
    assert AIJob.objects.count() == 2


def test_a_webhook_job_gets_its_owners_secret_in_its_own_transaction(client, user, redis_conn):
    client.post(JOBS, BODY, format="json")  # the connection's first submission prepares the statements
    body = {**BODY, "webhook": {"url": "https://hooks.example.com/x"}}
    response, counts = counted(lambda: client.post(JOBS, body, format="json"))
    assert response.status_code == 201, response.content
    assert WebhookSecret.objects.get().owner == user
    # the token; BEGIN, the INSERT, the secret looked for, then created (under a savepoint), COMMIT. The INSERT
    # binds a webhook where the first bound a null (its type unknown): a prepared statement of its own, once
    assert counts.pg_log.count("PREPARE") == 1
    log = [word for word in counts.pg_log if word != "PREPARE"]
    assert counts.transactions == 2 and log[:3] == ["SELECT (autocommit)", "BEGIN", "WITH"]


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
