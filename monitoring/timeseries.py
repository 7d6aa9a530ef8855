"""The dashboard's time series: `GET /api/ai/stats/timeseries` and the admin's live dashboard read it.

A window (1 h, 24 h, 7 d) is cut into buckets aligned on the epoch (1 min, 15 min, 1 h). Each bucket holds:
jobs that ended succeeded or dead by provider (AIJob.finished_at), attempts started and their latency p50/p95
and failures by error type (JobAttempt.started_at), spend (TokenUsage.created_at), jobs submitted, the wait
from submission to the first claim (p50/p95), jobs waiting for a first attempt at the bucket's end, and the
most attempts in flight at a minute's end.

Settled minutes come from monitoring.models.MinuteRollup, whole settled hours (for the 7-day window's hour
buckets) from HourRollup, both filled here, on read, for what the request needs and the tables lack; the last
few minutes, where attempts still running will add rows, are computed from the rows on every request. A
minute row and the live tail come from the same `_minutes`, and an hour row is the sum of its minute rows,
so a bucket reads the same whichever way it was computed.

Percentiles are estimated from fixed histogram buckets (as Prometheus' histogram_quantile does): a rollup
can add histograms, not exact percentiles. The waiting count is rebuilt backwards from the jobs waiting now
(submitted − first claims − cancels before a claim, minute by minute): it counts jobs waiting for their first
attempt; retries waiting out their backoff are `retrying`, shown in `current`.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.db import connection
from django.utils import timezone

from jobs.models import JobStatus
from monitoring.models import HourRollup, MinuteRollup
from monitoring.rollups import (
    CHARTED_STATUSES,
    LATENCY_BOUNDS_MS,
    WAIT_BOUNDS_SECONDS,
    Tally,
    epoch,
    minute_floor,
    rollup_fill,
    rollup_read,
    settle_seconds,
    tally_minutes,
)

# window → (its length, its bucket), seconds
WINDOWS = {"1h": (3600, 60), "24h": (86_400, 900), "7d": (7 * 86_400, 3600)}
MONEY = Decimal("0.000001")


# --- now ---


def _current(now: datetime) -> dict:
    """The jobs not yet final, from the status index (a few thousand rows at most, never the table)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT status, count(*), count(*) FILTER (WHERE attempts = 0),
                   min(CASE WHEN status = %s THEN (CASE WHEN attempts = 0 THEN created_at ELSE updated_at END)
                            WHEN next_attempt_at <= %s THEN next_attempt_at END)
              FROM jobs_aijob WHERE status IN (%s, %s, %s) GROUP BY status
            """,
            [JobStatus.QUEUED, now, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.RETRYING],
        )
        rows = cursor.fetchall()
    current = {"queued": 0, "running": 0, "retrying": 0, "waiting_first_attempt": 0}
    oldest = None
    for status, n, never_claimed, waiting_since in rows:
        current[status] = n
        if status == JobStatus.QUEUED:
            current["waiting_first_attempt"] = never_claimed
        if waiting_since is not None and (oldest is None or waiting_since < oldest):
            oldest = waiting_since
    current["oldest_waiting_seconds"] = None if oldest is None else round(max((now - oldest).total_seconds(), 0), 1)
    return current


# --- the answer ---


def quantile(q: float, histogram: Counter, prefix: str, bounds: tuple) -> float | None:
    """Linear interpolation inside the bucket the q-th value falls in; the top bucket answers its lower bound."""
    counts = [histogram.get(f"{prefix}:{i}", 0) for i in range(len(bounds) + 1)]
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i == len(bounds):
                return float(bounds[-1])
            lower = 0.0 if i == 0 else float(bounds[i - 1])
            return lower + (float(bounds[i]) - lower) * (rank - seen) / n
        seen += n
    return float(bounds[-1])


def _money(value: Decimal) -> str:
    return str(value.quantize(MONEY, rounding=ROUND_HALF_UP))


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def stats_timeseries(*, window: str, now: datetime | None = None) -> dict:
    """The dashboard's series over one window (a key of WINDOWS); see the module's docstring."""
    span, step = WINDOWS[window]
    now = (now or timezone.now()).astimezone(UTC)
    end = datetime.fromtimestamp((epoch(now) // step + 1) * step, tz=UTC)  # the bucket holding `now` is last
    start = end - timedelta(seconds=span)
    count = span // step
    settled = max(minute_floor(now - timedelta(seconds=settle_seconds())), start)

    rollup_fill(MinuteRollup, since=start, until=settled)
    if step % 3600 == 0:  # hour buckets: the whole settled hours from their own rows
        hours = max(settled.replace(minute=0), start)
        rollup_fill(HourRollup, since=start, until=hours)
        parts = [
            rollup_read(HourRollup, start=start, until=hours, step=step),
            rollup_read(MinuteRollup, start=hours, until=settled, step=step),
        ]
    else:
        parts = [rollup_read(MinuteRollup, start=start, until=settled, step=step)]
    buckets = [Tally() for _ in range(count)]
    for part in parts:
        for at, tally in part.items():
            buckets[(epoch(at) - epoch(start)) // step].add(tally)
    for minute, tally in tally_minutes(settled, now).items():
        buckets[(epoch(minute) - epoch(start)) // step].add(tally)
    current = _current(now)

    # jobs waiting for a first attempt at each bucket's end, from now backwards
    waiting = [0] * count
    level = current["waiting_first_attempt"]
    for index in range(count - 1, -1, -1):
        waiting[index] = max(level, 0)
        b = buckets[index]
        level -= b.submitted - b.claimed_first - b.canceled_unclaimed

    totals = Counter()
    for b in buckets:
        totals.update(b.counts)
    providers = sorted({key.split(":")[1] for key in totals if key.startswith("job:")})
    error_types = sorted(key[4:] for key in totals if key.startswith("err:"))
    return {
        "window": window,
        "bucket_seconds": step,
        "start": start,
        "end": end,
        "generated_at": now,
        "settled_until": settled,
        "buckets": [start + timedelta(seconds=i * step) for i in range(count)],
        "jobs": {
            str(status): {p: [b.counts.get(f"job:{p}:{status}", 0) for b in buckets] for p in providers}
            for status in CHARTED_STATUSES
        },
        "attempts": [b.counts.get("att", 0) for b in buckets],
        "latency_ms": {
            name: [_round(quantile(q, b.counts, "lat", LATENCY_BOUNDS_MS), 0) for b in buckets]
            for name, q in (("p50", 0.5), ("p95", 0.95))
        },
        "errors": {t: [b.counts.get(f"err:{t}", 0) for b in buckets] for t in error_types},
        "spend_usd": [_money(b.spend) for b in buckets],
        "queue": {
            "submitted": [b.submitted for b in buckets],
            "waiting": waiting,
            **{
                f"wait_{name}_seconds": [_round(quantile(q, b.counts, "wait", WAIT_BOUNDS_SECONDS), 2) for b in buckets]
                for name, q in (("p50", 0.5), ("p95", 0.95))
            },
        },
        "running": [b.running for b in buckets],
        "current": current,
        "totals": {
            "succeeded": sum(n for key, n in totals.items() if key.endswith(f":{JobStatus.SUCCEEDED}")),
            "dead": sum(n for key, n in totals.items() if key.endswith(f":{JobStatus.DEAD}")),
            "attempts": totals.get("att", 0),
            "failed_attempts": sum(n for key, n in totals.items() if key.startswith("err:")),
            "submitted": sum(b.submitted for b in buckets),
            "spend_usd": _money(sum((b.spend for b in buckets), Decimal(0))),
        },
    }
