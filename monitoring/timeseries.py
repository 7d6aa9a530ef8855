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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import connection
from django.utils import timezone

from jobs.models import JobStatus
from monitoring.models import HourRollup, MinuteRollup, Rollup

# window → (its length, its bucket), seconds
WINDOWS = {"1h": (3600, 60), "24h": (86_400, 900), "7d": (7 * 86_400, 3600)}
RETENTION = timedelta(days=8)  # the longest window and a day
FILL_CHUNK = timedelta(days=1)  # a cold fill of a week is seven bounded statements per table, not one
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
# Bucket bounds: a value v falls in bucket i when BOUNDS[i-1] <= v < BOUNDS[i] (Postgres' width_bucket).
LATENCY_BOUNDS_MS = (
    25, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000, 4000, 5000, 7500, 10_000,
    15_000, 20_000, 30_000, 45_000, 60_000, 90_000, 120_000, 180_000, 300_000,
)  # fmt: skip
WAIT_BOUNDS_SECONDS = (
    0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21_600, 86_400,
)  # fmt: skip
MONEY = Decimal("0.000001")
CHARTED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.DEAD)


def settle_seconds() -> float:
    """How old a minute must be before no row can still arrive for it: an attempt's row is written when it
    ends, at the latest by the reconcile run (every minute) after its lease expired."""
    return settings.AI_LEASE_SECONDS + 120


@dataclass
class Tally:
    """What a minute, an hour or a bucket holds (the columns of monitoring.models.Rollup)."""

    counts: Counter = field(default_factory=Counter)
    spend: Decimal = Decimal(0)
    submitted: int = 0
    claimed_first: int = 0
    canceled_unclaimed: int = 0
    running: int = 0

    def add(self, other: Tally) -> None:
        self.counts.update(other.counts)
        self.spend += other.spend
        self.submitted += other.submitted
        self.claimed_first += other.claimed_first
        self.canceled_unclaimed += other.canceled_unclaimed
        self.running = max(self.running, other.running)


# --- the rows → minutes ---


def _minute_floor(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def _epoch(at: datetime) -> int:
    return int(at.timestamp())


def _minutes(lo: datetime, hi: datetime) -> dict[datetime, Tally]:
    """Every minute from `lo` (a minute's start) up to `hi` (exclusive; a partial last minute when `hi` is not
    a minute's start), computed from the rows. Each statement is a range scan of one indexed column."""
    out: dict[datetime, Tally] = {}
    at = lo
    while at < hi:
        out[at] = Tally()
        at += MINUTE
    if not out:
        return out
    run = settings.AI_LEASE_SECONDS
    with connection.cursor() as cursor:
        # jobs_aijob(finished_at): jobs that ended, and jobs canceled before any attempt
        cursor.execute(
            """
            SELECT date_trunc('minute', finished_at), provider, status, attempts = 0, count(*)
              FROM jobs_aijob
             WHERE finished_at >= %s AND finished_at < %s AND status IN (%s, %s, %s)
             GROUP BY 1, 2, 3, 4
            """,
            [lo, hi, JobStatus.SUCCEEDED, JobStatus.DEAD, JobStatus.CANCELED],
        )
        for minute, provider, status, unclaimed, n in cursor.fetchall():
            if status == JobStatus.CANCELED:
                if unclaimed:
                    out[minute].canceled_unclaimed += n
            else:
                out[minute].counts[f"job:{provider}:{status}"] += n
        # jobs_jobattempt(started_at): attempts, their latency histogram and error types
        cursor.execute(
            """
            SELECT date_trunc('minute', started_at), error_type, width_bucket(latency_ms, %s::int[]), count(*)
              FROM jobs_jobattempt
             WHERE started_at >= %s AND started_at < %s
             GROUP BY 1, 2, 3
            """,
            [list(LATENCY_BOUNDS_MS), lo, hi],
        )
        for minute, error_type, bucket, n in cursor.fetchall():
            counts = out[minute].counts
            counts["att"] += n
            if error_type:
                counts[f"err:{error_type}"] += n
            if bucket is not None:  # an abandoned attempt has no latency
                counts[f"lat:{bucket}"] += n
        # usage_tokenusage(created_at)
        cursor.execute(
            """
            SELECT date_trunc('minute', created_at), sum(cost) FROM usage_tokenusage
             WHERE created_at >= %s AND created_at < %s GROUP BY 1
            """,
            [lo, hi],
        )
        for minute, cost in cursor.fetchall():
            out[minute].spend += cost or Decimal(0)
        # jobs_aijob(created_at)
        cursor.execute(
            "SELECT date_trunc('minute', created_at), count(*) FROM jobs_aijob"
            " WHERE created_at >= %s AND created_at < %s GROUP BY 1",
            [lo, hi],
        )
        for minute, n in cursor.fetchall():
            out[minute].submitted += n
        # First claims and how long they waited: attempt 1's row, or the job itself while attempt 1 runs.
        cursor.execute(
            """
            SELECT date_trunc('minute', claimed), width_bucket(extract(epoch FROM claimed - created)::float8,
                   %s::float8[]), count(*)
              FROM (SELECT a.started_at AS claimed, j.created_at AS created
                      FROM jobs_jobattempt a JOIN jobs_aijob j ON j.id = a.job_id
                     WHERE a.number = 1 AND a.started_at >= %s AND a.started_at < %s
                    UNION ALL
                    SELECT started_at, created_at FROM jobs_aijob
                     WHERE status = %s AND attempts = 1 AND started_at >= %s AND started_at < %s) AS first
             GROUP BY 1, 2
            """,
            [[float(b) for b in WAIT_BOUNDS_SECONDS], lo, hi, JobStatus.RUNNING, lo, hi],
        )
        for minute, bucket, n in cursor.fetchall():
            out[minute].claimed_first += n
            out[minute].counts[f"wait:{bucket}"] += n
        # In flight: +1 when an attempt starts, -1 when it ends (or when its lease would have, for one still
        # running or lost), summed up to each minute's end. Attempts that started a lease before `lo` have
        # ended by then, so the sum starts there.
        cursor.execute(
            """
            SELECT date_trunc('minute', at), sum(step)
              FROM (SELECT started_at AS at, 1 AS step FROM jobs_jobattempt
                     WHERE started_at >= %(from)s AND started_at < %(hi)s
                    UNION ALL
                    SELECT least(coalesce(finished_at, 'infinity'), started_at + %(run)s * interval '1 second'), -1
                      FROM jobs_jobattempt WHERE started_at >= %(from)s AND started_at < %(hi)s
                    UNION ALL
                    SELECT started_at, 1 FROM jobs_aijob
                     WHERE status = %(running)s AND started_at >= %(from)s AND started_at < %(hi)s
                    UNION ALL
                    SELECT started_at + %(run)s * interval '1 second', -1 FROM jobs_aijob
                     WHERE status = %(running)s AND started_at >= %(from)s AND started_at < %(hi)s) AS steps
             WHERE at < %(hi)s
             GROUP BY 1 ORDER BY 1
            """,
            {"from": lo - timedelta(seconds=run), "hi": hi, "run": run, "running": JobStatus.RUNNING},
        )
        steps = cursor.fetchall()
    level, index = 0, 0
    for minute, minute_data in out.items():
        while index < len(steps) and steps[index][0] <= minute:
            level += steps[index][1]
            index += 1
        minute_data.running = max(level, 0)
    return out


# --- the rollups ---


def _hours(lo: datetime, hi: datetime) -> dict[datetime, Tally]:
    """Whole hours in [lo, hi), each the sum of its 60 minute rows."""
    return _read(MinuteRollup, start=lo, until=hi, step=3600)


LEVELS: tuple[tuple[type[Rollup], timedelta, object], ...] = (
    (MinuteRollup, MINUTE, _minutes),
    (HourRollup, HOUR, _hours),
)


def rollup_fill(model: type[Rollup], *, since: datetime, until: datetime) -> int:
    """Write every row of `model` in [since, until) the table lacks; returns how many were written.

    Usually none or one: a count over the primary key says so. After a cold start, or a pause longer than
    the window, the missing runs are found and computed a day at a time."""
    size, compute = next((size, compute) for level, size, compute in LEVELS if level is model)
    table = model._meta.db_table
    expected = int((until - since) / size)
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE start < %s", [until - RETENTION])
        cursor.execute(f"SELECT count(*) FROM {table} WHERE start >= %s AND start < %s", [since, until])
        if expected <= 0 or cursor.fetchone()[0] == expected:
            return 0
        cursor.execute(
            f"""
            SELECT s FROM generate_series(%s::timestamptz, %s::timestamptz, %s) AS s
             WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE start = s) ORDER BY s
            """,
            [since, until - size, size],
        )
        missing = [row[0] for row in cursor.fetchall()]
    written = 0
    for lo, hi in _runs(missing, size):
        while lo < hi:
            chunk_hi = min(hi, lo + FILL_CHUNK)
            rows = [
                model(
                    start=start,
                    counts=dict(tally.counts),
                    spend=tally.spend,
                    submitted=tally.submitted,
                    claimed_first=tally.claimed_first,
                    canceled_unclaimed=tally.canceled_unclaimed,
                    running=tally.running,
                )
                for start, tally in compute(lo, chunk_hi).items()
            ]
            # a concurrent request may have written some of them: the same numbers, kept once
            model.objects.bulk_create(rows, batch_size=2000, ignore_conflicts=True)
            written += len(rows)
            lo = chunk_hi
    return written


def _runs(starts: list[datetime], size: timedelta) -> list[tuple[datetime, datetime]]:
    """Sorted starts → [first, end) runs of consecutive ones."""
    runs: list[tuple[datetime, datetime]] = []
    for start in starts:
        if runs and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], start + size)
        else:
            runs.append((start, start + size))
    return runs


def _read(model: type[Rollup], *, start: datetime, until: datetime, step: int) -> dict[datetime, Tally]:
    """The rows of `model` in [start, until) summed per `step` seconds counted from `start`; Postgres adds."""
    out: dict[datetime, Tally] = {}
    if until <= start:
        return out
    bucket = "(extract(epoch FROM start)::bigint - %(start)s) / %(step)s"
    params = {"start": _epoch(start), "step": step, "lo": start, "hi": until}

    def tally(index: int) -> Tally:
        key = start + timedelta(seconds=index * step)
        return out.setdefault(key, Tally())

    table = model._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            SELECT {bucket}, sum(spend), sum(submitted), sum(claimed_first), sum(canceled_unclaimed), max(running)
              FROM {table} WHERE start >= %(lo)s AND start < %(hi)s GROUP BY 1
            """,
            params,
        )
        for index, spend, submitted, claimed, canceled, running in cursor.fetchall():
            t = tally(index)
            t.spend += spend
            t.submitted += submitted
            t.claimed_first += claimed
            t.canceled_unclaimed += canceled
            t.running = max(t.running, running)
        cursor.execute(
            f"""
            SELECT {bucket}, c.key, sum(c.value::bigint)::bigint
              FROM {table}, jsonb_each_text(counts) AS c
             WHERE start >= %(lo)s AND start < %(hi)s GROUP BY 1, 2
            """,
            params,
        )
        for index, key, n in cursor.fetchall():
            tally(index).counts[key] += n
    return out


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
    end = datetime.fromtimestamp((_epoch(now) // step + 1) * step, tz=UTC)  # the bucket holding `now` is last
    start = end - timedelta(seconds=span)
    count = span // step
    settled = max(_minute_floor(now - timedelta(seconds=settle_seconds())), start)

    rollup_fill(MinuteRollup, since=start, until=settled)
    if step % 3600 == 0:  # hour buckets: the whole settled hours from their own rows
        hours = max(settled.replace(minute=0), start)
        rollup_fill(HourRollup, since=start, until=hours)
        parts = [
            _read(HourRollup, start=start, until=hours, step=step),
            _read(MinuteRollup, start=hours, until=settled, step=step),
        ]
    else:
        parts = [_read(MinuteRollup, start=start, until=settled, step=step)]
    buckets = [Tally() for _ in range(count)]
    for part in parts:
        for at, tally in part.items():
            buckets[(_epoch(at) - _epoch(start)) // step].add(tally)
    for minute, tally in _minutes(settled, now).items():
        buckets[(_epoch(minute) - _epoch(start)) // step].add(tally)
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
