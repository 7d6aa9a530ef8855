"""The Redis token bucket: atomic across processes, never over its rate, and it gates real workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from django.conf import settings as django_settings

from jobs import ratelimit
from jobs.models import AIJob, JobAttempt
from jobs.queue_control import queue_status
from tests.factories import submit_job

HAMMER = """
import json, os, sys, time
import django
django.setup()
from jobs import ratelimit
rate, burst, seconds = (float(a) for a in sys.argv[1:4])
print("ready", flush=True)
start_at = float(sys.stdin.readline())  # both processes start hammering at the same instant
while time.time() < start_at:
    time.sleep(0.001)
admitted = []
while time.time() < start_at + seconds:
    before = time.time()
    if ratelimit.acquire(provider="local", rate=rate, burst=burst).allowed:
        admitted.append((before, time.time()))
print(json.dumps(admitted))
"""


def _child_env() -> dict:
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "aipb.settings"
    return env


def _overfull_windows(calls: list[tuple[float, float]], rate: float, burst: float) -> list[tuple[int, float]]:
    """Runs of admissions that a bucket of this rate and burst could not have granted.

    Each admission happened on Redis's clock (the same host clock as ``time.time()``) at some
    instant between its call's start and return. Any k admissions therefore lie within
    ``max(return) - min(start)`` of each other, and a token bucket grants at most
    ``burst + rate * span`` in a span. The bound is exact: no slack for a busy machine is
    needed, because a call delayed by scheduling widens its own interval.
    """
    calls = sorted(calls, key=lambda c: c[1])
    bad = []
    for lo in range(len(calls)):
        earliest = calls[lo][0]
        for hi in range(lo, len(calls)):
            earliest = min(earliest, calls[hi][0])
            span = calls[hi][1] - earliest
            if hi - lo + 1 > burst + rate * span + 1e-6:
                bad.append((hi - lo + 1, span))
    return bad


def test_two_processes_never_exceed_the_rate(redis_conn):
    rate, burst, seconds = 20.0, 5.0, 3.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", HAMMER, str(rate), str(burst), str(seconds)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_child_env(),
            cwd=django_settings.BASE_DIR,
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    start_at = f"{time.time() + 0.2}\n"
    for p in procs:
        p.stdin.write(start_at)
        p.stdin.flush()
    results = [json.loads(p.communicate(timeout=30)[0]) for p in procs]
    calls = [tuple(c) for r in results for c in r]
    assert all(results), "both processes got tokens"
    # a token bucket admits at most burst + rate * T in any span of T seconds, the whole run included
    assert _overfull_windows(calls, rate, burst) == []
    assert len(calls) >= rate * seconds * 0.6, "the limiter must not starve callers either"


def test_rate_zero_disables_the_limiter(redis_conn):
    assert all(ratelimit.acquire(provider="x", rate=0).allowed for _ in range(1000))


def test_denied_caller_is_told_how_long_to_wait(redis_conn):
    assert ratelimit.acquire(provider="x", rate=2, burst=1).allowed
    decision = ratelimit.acquire(provider="x", rate=2, burst=1)
    assert not decision.allowed and 0 < decision.wait_seconds <= 0.5


def test_per_provider_buckets(redis_conn, settings):
    settings.AI_RATE_LIMIT_PER_PROVIDER = True
    assert ratelimit.acquire(provider="openai", rate=1, burst=1).allowed
    assert not ratelimit.acquire(provider="openai", rate=1, burst=1).allowed
    assert ratelimit.acquire(provider="anthropic", rate=1, burst=1).allowed


@pytest.mark.django_db(transaction=True)
def test_throttled_jobs_wait_without_spending_attempts(user, run_worker, settings):
    settings.AI_RATE_LIMIT_PER_SECOND = 5
    settings.AI_RATE_LIMIT_BURST = 1
    settings.AI_RATE_LIMIT_RETRY_SECONDS = 0.05
    jobs = [submit_job(user, prompt=f"page {i}") for i in range(6)]
    started = time.monotonic()
    run_worker(timeout=60)
    elapsed = time.monotonic() - started

    assert set(AIJob.objects.values_list("status", flat=True)) == {"succeeded"}
    assert set(AIJob.objects.values_list("attempts", flat=True)) == {1}, "waiting for a token spends no attempt"
    assert JobAttempt.objects.count() == len(jobs)
    starts = sorted(JobAttempt.objects.values_list("started_at", flat=True))
    span = (starts[-1] - starts[0]).total_seconds()
    assert span >= (len(jobs) - 1 - 1) / 5, "six calls at 5/s with a bucket of one take about a second"
    assert elapsed >= span
    # the hand-backs ran no attempt: RQ's "completed" counts the six attempts, not every throttled delivery
    assert AIJob.objects.filter(deliveries__gt=1).exists(), "the limiter handed deliveries back"
    assert queue_status()["totals"]["completed"] == len(jobs)
