"""Two real scheduler processes (`manage.py schedules run`) against one database fire each instant once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta

from django.db.models import Count
from django.utils import timezone

from jobs.models import AIJob
from schedules.models import Schedule, ScheduleFiring
from tests.ops.conftest import BASE_DIR, child_env, wait_for

SCHEDULES = 150


class Scheduler:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "schedules", "run", "--every", "0.2", "--json"],
            cwd=BASE_DIR,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.reports: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.reports.append(json.loads(line))

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        self._reader.join(timeout=10)
        return err

    def submitted(self) -> int:
        return sum(report["submitted"] for report in self.reports)


def test_two_scheduler_processes_fire_each_instant_once(make_schedule, transactional_db, redis_conn, settings):
    settings.AI_SCHEDULES_PER_USER_MAX = SCHEDULES
    schedules = [make_schedule(cron="0 0 1 1 *", prompt=f"page {n}") for n in range(SCHEDULES)]
    first, second = Scheduler(), Scheduler()
    try:
        wait_for(lambda: first.reports and second.reports, timeout=180, what="both schedulers' first tick")
        # Both are ticking every 0.2 s: every schedule falls due at once, and both reach for all of them.
        Schedule.objects.update(next_fire_at=timezone.now() - timedelta(seconds=1))
        wait_for(lambda: ScheduleFiring.objects.count() >= SCHEDULES, timeout=180, what="every firing")
        time.sleep(1.0)  # a few more ticks each: nothing more may fire
    finally:
        errors = [scheduler.stop() for scheduler in (first, second)]

    assert [scheduler.proc.returncode for scheduler in (first, second)] == [0, 0], errors
    assert ScheduleFiring.objects.count() == SCHEDULES
    assert AIJob.objects.count() == SCHEDULES
    per_schedule = dict(ScheduleFiring.objects.values_list("schedule").annotate(n=Count("id")))
    assert per_schedule == {schedule.id: 1 for schedule in schedules}
    assert set(ScheduleFiring.objects.values_list("job_id", flat=True)) == set(
        AIJob.objects.values_list("id", flat=True)
    )
    split = (first.submitted(), second.submitted())
    assert sum(split) == SCHEDULES, split
    assert min(split) > 0, f"the two processes did not overlap: {split}"  # else the race was not run
    # each moved on to next year's instant: nothing is due any more
    assert not Schedule.objects.filter(next_fire_at__lte=timezone.now()).exists()
    print(
        f"submitted by each process: {split}; skipped: "
        f"{sum(r['skipped'] for r in first.reports)}, {sum(r['skipped'] for r in second.reports)}"
    )
