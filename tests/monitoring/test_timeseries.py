"""monitoring.timeseries and GET /api/ai/stats/timeseries: rows in the right buckets, the rolled-up minutes
equal to the same minutes computed live, the windows agreeing, the rollup filled once, and bad input refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs.errors import ErrorType
from jobs.models import AIJob, AttemptOutcome, JobStatus
from monitoring import timeseries
from monitoring.models import HourRollup, MinuteRollup
from tests.factories import AIJobFactory, JobAttemptFactory, TokenUsageFactory

pytestmark = pytest.mark.django_db

URL = "/api/ai/stats/timeseries"
S = timedelta(seconds=1)


@pytest.fixture
def now() -> datetime:
    # half a minute into a minute, so "10 s into the minute" stays inside it
    return timezone.now().astimezone(UTC).replace(second=30, microsecond=0)


def job(*, provider="openai", model="gpt-4o-mini", status=JobStatus.SUCCEEDED, created, started=None, finished=None,
        attempts=1) -> AIJob:  # fmt: skip
    row = AIJobFactory(
        provider=provider, model=model, status=status, attempts=attempts, started_at=started, finished_at=finished
    )
    AIJob.objects.filter(id=row.id).update(created_at=created)  # auto_now_add: set after the insert
    row.refresh_from_db()
    return row


def attempt(row: AIJob, number: int, *, started: datetime, latency_ms: int | None, error: str = ""):
    return JobAttemptFactory(
        job=row,
        number=number,
        started_at=started,
        finished_at=started + timedelta(milliseconds=latency_ms or 0),
        latency_ms=latency_ms,
        outcome=AttemptOutcome.FAILED if error else AttemptOutcome.SUCCEEDED,
        error_type=error,
    )


def at(body: dict, series: list, when: datetime):
    """The value of a series in the bucket that holds `when`."""
    start = datetime.fromisoformat(body["start"]) if isinstance(body["start"], str) else body["start"]
    return series[int((when - start).total_seconds()) // body["bucket_seconds"]]


@pytest.fixture
def seeded(now):
    """Half an hour ago (settled: from the rollup): an openai job that succeeded at its first attempt and one
    that died after a rate limit and a timeout. A minute ago (live): a simulated job that succeeded. Ten
    minutes ago a job was submitted that no worker has claimed; twenty seconds ago one was claimed and runs."""
    t1 = now.replace(second=10) - timedelta(minutes=30)
    t2 = now.replace(second=10) - timedelta(minutes=1)
    ok = job(created=t1 - 3 * S, started=t1 - 2 * S, finished=t1 + S)
    attempt(ok, 1, started=t1 - 2 * S, latency_ms=250)
    dead = job(status=JobStatus.DEAD, created=t1 - 5 * S, started=t1 + 5 * S, finished=t1 + 20 * S, attempts=2)
    attempt(dead, 1, started=t1 - 4 * S, latency_ms=300, error=ErrorType.RATE_LIMIT)
    attempt(dead, 2, started=t1 + 5 * S, latency_ms=1200, error=ErrorType.TIMEOUT)
    TokenUsageFactory(job=ok, owner=ok.owner, cost=Decimal("0.001"), created_at=t1 + S)
    sim = job(provider="simulated", model="sim-small", created=t2 - 4 * S, started=t2 - 2 * S, finished=t2 + S)
    attempt(sim, 1, started=t2 - 2 * S, latency_ms=600)
    TokenUsageFactory(job=sim, owner=sim.owner, cost=Decimal("0.0025"), created_at=t2 + S)
    waiting = job(status=JobStatus.QUEUED, created=now - timedelta(minutes=10), attempts=0)
    job(status=JobStatus.RUNNING, created=now - 21 * S, started=now - 20 * S)
    return {"t1": t1, "t2": t2, "waiting": waiting}


def test_each_row_counts_in_its_bucket(seeded, now):
    body = timeseries.stats_timeseries(window="1h", now=now)
    t1, t2 = seeded["t1"], seeded["t2"]
    assert body["bucket_seconds"] == 60 and len(body["buckets"]) == 60
    assert body["start"] <= t1 - timedelta(minutes=1) and body["end"] > now
    assert body["settled_until"] < t2 < now  # t1 from the rollup, t2 computed live

    assert at(body, body["jobs"]["succeeded"]["openai"], t1) == 1
    assert at(body, body["jobs"]["dead"]["openai"], t1) == 1
    assert at(body, body["jobs"]["succeeded"]["simulated"], t2) == 1
    assert sum(body["jobs"]["succeeded"]["openai"]) == 1 and sum(body["jobs"]["dead"]["simulated"]) == 0
    assert at(body, body["attempts"], t1) == 3 and at(body, body["attempts"], t2) == 1
    assert at(body, body["errors"]["RATE_LIMIT"], t1) == 1 and at(body, body["errors"]["TIMEOUT"], t1) == 1
    assert sorted(body["errors"]) == ["RATE_LIMIT", "TIMEOUT"]
    assert at(body, body["spend_usd"], t1) == "0.001000" and at(body, body["spend_usd"], t2) == "0.002500"
    assert body["spend_usd"][0] == "0.000000"

    # 250, 300 and 1200 ms: the median falls in [300, 400) and is interpolated in it; p95 in [1000, 1500)
    assert at(body, body["latency_ms"]["p50"], t1) == 350
    assert 1000 <= at(body, body["latency_ms"]["p95"], t1) < 1500
    assert at(body, body["latency_ms"]["p50"], t2) == 625  # one value in [500, 750): its middle
    assert body["latency_ms"]["p50"][0] is None  # nothing then: no line, not a zero

    # submissions, first claims and their wait (1 s and 1 s in t1's minute, 2 s at t2)
    assert at(body, body["queue"]["submitted"], t1) == 2
    assert 1 <= at(body, body["queue"]["wait_p50_seconds"], t1) < 2
    assert 2 <= at(body, body["queue"]["wait_p50_seconds"], t2) < 5
    # the unclaimed job waits from its submission on; the others were claimed within their minute
    waiting = body["queue"]["waiting"]
    assert at(body, waiting, now - timedelta(minutes=11)) == 0
    assert at(body, waiting, now - timedelta(minutes=9)) == 1 and waiting[-1] == 1
    assert body["running"][-1] == 1 and at(body, body["running"], t1) == 0

    assert body["current"] == {
        "queued": 1,
        "running": 1,
        "retrying": 0,
        "waiting_first_attempt": 1,
        "oldest_waiting_seconds": 600.0,
    }
    assert body["totals"] == {
        "succeeded": 2,
        "dead": 1,
        "attempts": 4,
        "failed_attempts": 2,
        "submitted": 5,
        "spend_usd": "0.003500",
    }


def test_a_minute_reads_the_same_live_and_rolled_up(seeded, now):
    live = timeseries.stats_timeseries(window="1h", now=now)
    later = now + timedelta(seconds=timeseries.settle_seconds() + 120)
    rolled = timeseries.stats_timeseries(window="1h", now=later)
    t2 = seeded["t2"]
    assert live["settled_until"] < t2 < rolled["settled_until"]
    assert MinuteRollup.objects.filter(start=t2.replace(second=0)).exists()
    for path in (
        ("jobs", "succeeded", "simulated"),
        ("attempts",),
        ("latency_ms", "p50"),
        ("latency_ms", "p95"),
        ("spend_usd",),
        ("queue", "submitted"),
        ("queue", "wait_p95_seconds"),
    ):
        a, b = live, rolled
        for key in path:
            a, b = a[key], b[key]
        assert at(live, a, t2) == at(rolled, b, t2), path


def test_the_windows_agree(seeded, now):
    later = now + timedelta(hours=2)  # the seeded hour has settled: the 7-day window reads it from HourRollup
    bodies = {window: timeseries.stats_timeseries(window=window, now=later) for window in ("24h", "7d")}
    bodies["1h"] = timeseries.stats_timeseries(window="1h", now=now)
    assert HourRollup.objects.exists()
    assert [len(bodies[w]["buckets"]) for w in ("1h", "24h", "7d")] == [60, 96, 168]
    expected = {k: v for k, v in bodies["1h"]["totals"].items()}
    for window in ("24h", "7d"):
        assert bodies[window]["totals"] == expected, window
        assert at(bodies[window], bodies[window]["jobs"]["dead"]["openai"], seeded["t1"]) == 1


def test_the_rollup_is_filled_once_and_a_gap_is_filled_again(seeded, now):
    timeseries.stats_timeseries(window="24h", now=now)
    minutes = MinuteRollup.objects.count()
    assert minutes >= 23 * 60
    start = now.replace(second=0) - timedelta(hours=12)
    assert timeseries.rollup_fill(MinuteRollup, since=start, until=start + timedelta(hours=1)) == 0
    MinuteRollup.objects.filter(start__gte=start, start__lt=start + timedelta(minutes=5)).delete()
    assert timeseries.rollup_fill(MinuteRollup, since=start, until=start + timedelta(hours=1)) == 5
    assert MinuteRollup.objects.count() == minutes


def test_a_warm_request_is_a_few_statements_whatever_the_window(seeded, now):
    for window in timeseries.WINDOWS:
        timeseries.stats_timeseries(window=window, now=now)
        with CaptureQueriesContext(connection) as queries:
            timeseries.stats_timeseries(window=window, now=now)
        writes = [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith("INSERT")]
        assert writes == [] and len(queries) <= 20, (window, [q["sql"][:80] for q in queries])


def test_quantile_interpolates_inside_the_bucket():
    from collections import Counter

    bounds = (100, 200, 400)
    assert timeseries.quantile(0.5, Counter(), "lat", bounds) is None
    assert timeseries.quantile(0.5, Counter({"lat:1": 2}), "lat", bounds) == 150  # [100, 200): its middle
    assert timeseries.quantile(1.0, Counter({"lat:0": 1, "lat:2": 1}), "lat", bounds) == 400
    assert timeseries.quantile(0.5, Counter({"lat:3": 4}), "lat", bounds) == 400  # above the top bound


# --- the API ---


def test_staff_get_the_series_through_the_api(staff_api, seeded):
    response = staff_api.get(URL, {"window": "24h"})
    assert response.status_code == 200
    body = response.json()
    assert body["window"] == "24h" and body["bucket_seconds"] == 900 and len(body["buckets"]) == 96
    assert body["start"].endswith("Z") and body["buckets"][0] == body["start"]
    assert body["totals"]["succeeded"] == 2 and body["totals"]["spend_usd"] == "0.003500"
    assert staff_api.get(URL).json()["window"] == "1h"  # the default


@pytest.mark.parametrize(
    "query", [{"window": "2h"}, {"window": ""}, {"window": "1H"}, {"window": "7d", "provider": "openai"}]
)
def test_bad_input_is_a_400_in_the_error_shape(staff_api, query):
    response = staff_api.get(URL, query)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "validation_error" and error["message"].startswith("invalid input")
    assert not MinuteRollup.objects.exists()  # refused before anything was computed


def test_only_staff_may_read_it(api, anon_api):
    assert api.get(URL).status_code == 403
    assert anon_api.get(URL).status_code == 401
    assert api.get(URL).json()["error"]["type"] == "permission_denied"


def test_the_operation_is_documented_with_an_example(staff_api):
    schema = staff_api.get("/api/schema/", {"format": "json"}).json()
    operation = schema["paths"][URL]["get"]
    assert operation["operationId"] == "ai_stats_timeseries" and "dashboard" in operation["description"]
    (parameter,) = operation["parameters"]
    assert parameter["name"] == "window" and parameter["schema"]["enum"] == ["1h", "24h", "7d"]
    content = operation["responses"]["200"]["content"]["application/json"]
    assert content["examples"] and "400" in operation["responses"]
