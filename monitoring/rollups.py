"""The dashboard's minute and hour rollups (monitoring.models), and the rows they are made from.

A minute's Tally is computed from the rows (jobs by AIJob.finished_at, attempts by JobAttempt.started_at, spend
by TokenUsage.created_at, submissions, first claims, cancels, attempts in flight); a settled minute is stored
once in MinuteRollup, a settled hour once in HourRollup as the sum of its minutes, filled on read for what a
request needs and the tables lack (monitoring.timeseries). See that module for what the buckets mean.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection

from jobs.models import JobStatus
from monitoring.models import HourRollup, MinuteRollup, Rollup

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


def minute_floor(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def epoch(at: datetime) -> int:
    return int(at.timestamp())


def tally_minutes(lo: datetime, hi: datetime) -> dict[datetime, Tally]:
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
    return rollup_read(MinuteRollup, start=lo, until=hi, step=3600)


LEVELS: tuple[tuple[type[Rollup], timedelta, object], ...] = (
    (MinuteRollup, MINUTE, tally_minutes),
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


def rollup_read(model: type[Rollup], *, start: datetime, until: datetime, step: int) -> dict[datetime, Tally]:
    """The rows of `model` in [start, until) summed per `step` seconds counted from `start`; Postgres adds."""
    out: dict[datetime, Tally] = {}
    if until <= start:
        return out
    bucket = "(extract(epoch FROM start)::bigint - %(start)s) / %(step)s"
    params = {"start": epoch(start), "step": step, "lo": start, "hi": until}

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
