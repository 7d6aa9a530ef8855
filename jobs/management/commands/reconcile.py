"""manage.py reconcile [--dry-run] [--json] [--every SECONDS]"""

from __future__ import annotations

import time

from django.core.management.base import CommandError
from django.db import DatabaseError, close_old_connections
from redis.exceptions import RedisError

from aipb.commands import OperatorCommand
from jobs.recovery import jobs_reconcile
from webhooks.delivery import webhooks_sweep


class Command(OperatorCommand):
    help = "Re-enqueue jobs Redis lost and recover jobs whose worker died (lease expired), each exactly once."

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")
        parser.add_argument("--every", type=float, default=None, metavar="SECONDS", help="run forever, every N seconds")

    def handle(self, *args, **options):
        every = options["every"]
        if every is not None and every <= 0:
            raise CommandError("--every must be a positive number of seconds")
        if every is None:
            self._print(self._run(options["dry_run"]), as_json=options["json"], quiet_when_idle=False)
            return
        while True:  # the schedule `make run` uses; a deployment may use cron with a plain `reconcile` instead
            close_old_connections()
            try:
                self._print(self._run(options["dry_run"]), as_json=options["json"], quiet_when_idle=True)
            except (DatabaseError, RedisError) as exc:
                self.stderr.write(f"reconcile: {exc.__class__.__name__}: {exc}; trying again in {every:g}s")
            time.sleep(every)

    @staticmethod
    def _run(dry_run: bool):
        report = jobs_reconcile(dry_run=dry_run)
        # after the jobs: a death found by lease recovery writes its job.dead event, which this sends if lost
        report.webhooks_requeued = webhooks_sweep(dry_run=dry_run)
        return report

    def _print(self, report, *, as_json: bool, quiet_when_idle: bool) -> None:
        if as_json:
            # the jobs' report only (scripts compare it whole); the sweep logs what it re-enqueued, and
            # `manage.py webhooks sweep --json` reports it
            self.print_json(report.as_dict(), one_line=True)  # with --every, one JSON document a line
            return
        total = len(report.requeued) + len(report.recovered) + len(report.dead)
        if report.webhooks_requeued:
            self.stdout.write(f"reconcile: re-enqueued {len(report.webhooks_requeued)} webhook deliveries Redis lost")
        if quiet_when_idle and total == 0:
            return
        verb = "would put back" if report.dry_run else "put back"
        self.stdout.write(
            f"reconcile: {verb} {len(report.requeued)} lost from Redis, {len(report.recovered)} from dead workers; "
            f"{len(report.dead)} dead (no attempts left)"
        )
        for label, ids in (("requeued", report.requeued), ("recovered", report.recovered), ("dead", report.dead)):
            for job_id in ids:
                self.stdout.write(f"  {label:9} {job_id}")
