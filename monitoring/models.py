"""The dashboard's rollups: one row per settled UTC minute, and one per hour (monitoring.timeseries writes
and reads them).

A 7-day chart straight from the rows aggregates every attempt, job and usage row of the week (a million
attempts is seconds of Postgres time); from the hour rows it reads 168 small rows. A minute is rolled up
once it is settled (older than a lease plus a reconcile run: every attempt that started in it has its row
by then), an hour once its minutes are, and neither is recomputed: rows that still arrive later for an old
minute (usage replayed from the spool after a Postgres outage) are in the reports but not in the charts.
"""

from __future__ import annotations

from django.db import models


class Rollup(models.Model):
    start = models.DateTimeField(primary_key=True)  # UTC
    # Flat counters, "<series>:<key>" → n, so Postgres can sum them per bucket (jsonb_each_text):
    # att (attempts), job:<provider>:<succeeded|dead>, err:<error type>, lat:<latency bucket>, wait:<wait bucket>
    counts = models.JSONField(default=dict)
    spend = models.DecimalField(max_digits=18, decimal_places=9, default=0)
    submitted = models.PositiveIntegerField(default=0)  # jobs created
    claimed_first = models.PositiveIntegerField(default=0)  # first attempts claimed: the end of a first wait
    canceled_unclaimed = models.PositiveIntegerField(default=0)  # canceled before any attempt
    running = models.PositiveIntegerField(default=0)  # the most attempts in flight at a minute's end

    class Meta:
        abstract = True
        ordering = ("start",)

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M} UTC"


class MinuteRollup(Rollup):
    pass


class HourRollup(Rollup):
    pass
