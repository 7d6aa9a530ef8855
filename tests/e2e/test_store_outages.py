"""What clients get while a store is down, through a real gunicorn, workers and reconcile (tests/e2e/harness.py):

- Redis stopped: every submission still answers 201 within a second (the row commits, the enqueue is skipped
  by the web path's fail-fast client and its circuit) and runs once Redis is back (reconcile delivers it);
- Postgres stopped: every /api/ answer is a 503 in the JSON error shape with Retry-After, token authentication
  included; /metrics still answers, with ai_database_up 0; nothing is half-written.

Then the books must balance as in every drill.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e import harness
from tests.e2e.books import check_books, metric_sum
from tests.e2e.harness import ALIAS, SIMPLE, Stack, sim_job

pytestmark = pytest.mark.e2e


def test_api_answers_while_redis_then_postgres_is_down(stack: Stack):
    stack.gunicorn()
    stack.workers(classes=(SIMPLE,))
    stack.reconciler(every=2)
    before = [sim_job(f"before-{n}", latency_ms=50) for n in range(10)]
    during = [sim_job(f"redis-down-{n}", latency_ms=50) for n in range(10)]
    stack.submit(before)

    stack.servers.redis.stop()
    client = stack.client()
    seconds = []
    for spec in during:
        started = time.monotonic()
        status, body = client.request("POST", "/api/ai/jobs", spec.body, headers={"Idempotency-Key": spec.key})
        seconds.append(time.monotonic() - started)
        assert status == 201, body
    # before the fail-fast path each took 9.3-9.7 s (three Redis calls, each retrying ~3 s)
    assert max(seconds) < 1.0, [round(s, 2) for s in seconds]
    stack.servers.redis.start()
    stack.wait_final(timeout=120, what="the jobs submitted while Redis was down")

    stack.servers.pg.stop()
    try:
        staff = stack.client(staff=True)
        for method, path, body in (
            ("GET", "/api/ai/jobs", None),
            ("POST", "/api/ai/jobs", sim_job("pg-down").body),
            ("GET", "/api/ai/dlq", None),
            ("GET", "/api/ai/queue", None),
            ("POST", "/api/auth/token", {"username": "x", "password": "y"}),
        ):
            status, answer = staff.request(method, path, body)
            assert status == 503, (method, path, answer)
            assert answer["error"]["type"] == "service_unavailable", answer
            assert int(staff.last_headers["Retry-After"]) > 0
        status, text = staff.request("GET", "/metrics")
        assert status == 200
        assert metric_sum(text, "ai_database_up") == 0
    finally:
        stack.servers.pg.resume()
        harness.reset_connection()

    specs = before + during
    stack.wait_final(timeout=60)
    books = check_books(using=ALIAS, metrics_text=stack.scrape(), metrics_slack=0)
    assert books.jobs == len(specs)  # the POST during the Postgres outage wrote nothing
    assert books.statuses == {"succeeded": len(specs)}, books.summary()
    assert metric_sum(stack.scrape(), "ai_database_up") == 1


def test_postgres_restart_between_the_answer_and_the_commit_bills_each_call_once(stack: Stack):
    """Postgres stops while attempts are inside their provider call, so they come back with an answer and no
    database: the usage goes to the Redis spool (or in just before), the attempt's end is written again once
    Postgres is back, reconcile replays the spool, and every call that returned usage has exactly one row."""
    stack.gunicorn()
    stack.workers(classes=(SIMPLE, SIMPLE))
    stack.reconciler(every=2)
    specs = [sim_job(f"pg-mid-{n}", latency_ms=1500) for n in range(24)]
    stack.submit(specs)
    harness.wait_for(lambda: stack.status_counts().get("running", 0) >= 2, timeout=30, what="attempts in flight")
    time.sleep(0.5)  # inside their 1.5 s provider call
    stack.servers.pg.stop()
    time.sleep(3)
    stack.servers.pg.resume()
    harness.reset_connection()

    stack.wait_final(timeout=120)
    books = check_books(using=ALIAS, metrics_text=stack.scrape(), metrics_slack=0)
    assert books.statuses == {"succeeded": len(specs)}, books.summary()
    logs = stack.logs("worker", chars=200_000)
    hit = logs.count("spooled to Redis") + logs.count("recording again")
    assert hit > 0, "the outage did not fall between a provider answer and its commit"
    assert stack.servers.redis.client().llen("aipb:usage:spool") == 0
    print(f"\n[{stack.name}] {hit} attempts met the outage after their provider answered: {books.summary()}")
