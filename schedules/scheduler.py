"""The scheduler: fire every due schedule once per tick, in as many processes as you like.

`make run` starts one (`manage.py schedules run`); a deployment may run several on different hosts: the firing
key (schedules.firing) makes each instant's job once. A process that was down finds what fell due meanwhile on
its first tick and fires each schedule once, however many of its instants were missed (coalescing), then goes
on from the first instant after now.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.utils import timezone
from redis.exceptions import RedisError

from monitoring import metrics
from schedules.firing import schedule_fire
from schedules.models import FiringTrigger, Schedule, ScheduleFiring

log = logging.getLogger(__name__)

BATCH = 100  # due schedules read at a time
MAX_BATCHES_PER_TICK = 50  # then the tick ends (its gauge moves) and the next one goes on
PRUNE_EVERY_SECONDS = 60.0
PRUNE_BATCH = 1000

_last_prune = 0.0


@dataclass
class TickReport:
    at: datetime
    fired: list[dict] = field(default_factory=list)  # one per firing this process made
    skipped: int = 0  # fired by another scheduler meanwhile, or paused or deleted meanwhile
    pruned: int = 0

    def as_dict(self) -> dict:
        counts = {"submitted": 0, "failed": 0}
        for firing in self.fired:
            counts[firing["outcome"]] += 1
        return {"at": self.at, **counts, "skipped": self.skipped, "pruned": self.pruned, "fired": self.fired}


def scheduler_tick(*, now: datetime | None = None, prune: bool = False) -> TickReport:
    """Fire every active schedule whose next_fire_at is at or before now, each for that instant, once. Old firing
    records are pruned at most once a minute, or now with ``prune``."""
    now = now or timezone.now()
    report = TickReport(at=now)
    for _ in range(MAX_BATCHES_PER_TICK):
        due = list(
            Schedule.objects.select_related("owner")
            .filter(paused=False, next_fire_at__lte=now)
            .order_by("next_fire_at", "id")[:BATCH]
        )
        # Two schedulers reading the same due list would meet at every row in the same order, each waiting on the
        # other's claim; shuffled, they mostly fire different ones.
        random.shuffle(due)
        for schedule in due:
            outcome, firing = schedule_fire(
                schedule=schedule, scheduled_for=schedule.next_fire_at, trigger=FiringTrigger.CRON, now=now
            )
            if firing is None:
                report.skipped += 1
                continue
            report.fired.append(
                {
                    "schedule_id": str(schedule.id),
                    "scheduled_for": firing.scheduled_for,
                    "outcome": outcome,
                    "job_id": str(firing.job_id) if firing.job_id else None,
                    "batch_id": str(firing.batch_id) if firing.batch_id else None,
                    "error": firing.error,
                }
            )
        if len(due) < BATCH:
            break
    report.pruned = _prune(now, force=prune)
    metrics.scheduler_ticked(at=time.time())
    return report


def _prune(now: datetime, *, force: bool = False) -> int:
    """Firing records older than AI_SCHEDULE_FIRINGS_KEEP_DAYS, a bounded batch at most once a minute. The
    firing key needs no old rows: next_fire_at only moves forward, so an old instant never comes back."""
    global _last_prune
    if not force and time.monotonic() - _last_prune < PRUNE_EVERY_SECONDS:
        return 0
    _last_prune = time.monotonic()
    cutoff = now - timedelta(days=settings.AI_SCHEDULE_FIRINGS_KEEP_DAYS)
    ids = list(ScheduleFiring.objects.filter(fired_at__lt=cutoff).values_list("id", flat=True)[:PRUNE_BATCH])
    if not ids:
        return 0
    deleted, _ = ScheduleFiring.objects.filter(id__in=ids).delete()
    return deleted


def scheduler_run(
    *,
    stop: threading.Event,
    every: float | None = None,
    on_tick: Callable[[TickReport], None] | None = None,
    on_error: Callable[[Exception], None] | None = None,
) -> None:
    """Tick every ``every`` seconds (AI_SCHEDULER_TICK_SECONDS) until ``stop`` is set. A database or Redis
    outage is reported and tried again next tick: the process stays up, and its gauge says it is not ticking."""
    every = settings.AI_SCHEDULER_TICK_SECONDS if every is None else every
    while not stop.is_set():
        started = time.monotonic()
        close_old_connections()
        try:
            report = scheduler_tick()
        except (DatabaseError, RedisError) as exc:
            log.warning("scheduler tick failed: %s: %s; trying again in %gs", exc.__class__.__name__, exc, every)
            if on_error is not None:
                on_error(exc)
        else:
            if on_tick is not None:
                on_tick(report)
        stop.wait(max(0.0, every - (time.monotonic() - started)))
