"""manage.py queue status|pause|resume|clear — RQ queue control for operators.

    queue status [--json]
    queue pause [--reason TEXT]     every worker on every host stops taking jobs; running ones finish
    queue resume
    queue clear [--status waiting|delayed|failed|completed ...] [--yes]

clear without --status clears waiting and delayed, i.e. cancels every job not yet started.
"""

from __future__ import annotations

import getpass
import sys

from django.core.management.base import BaseCommand, CommandError

from aipb.exceptions import ServiceError
from jobs import queue_control
from jobs.management.output import Progress, choice, print_json, print_table

CANCELING = ("waiting", "delayed")


class Command(BaseCommand):
    help = "Queue sizes, pause and resume every worker, clear waiting/delayed/failed/completed jobs."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="{status,pause,resume,clear}")

        p = sub.add_parser("status", help="sizes per status and queue, paused or not, workers")
        p.add_argument("--json", action="store_true", help="print the object GET /api/ai/queue returns")

        p = sub.add_parser("pause", help="stop every worker from taking jobs (survives worker restarts)")
        p.add_argument("--reason", default="", help="shown in queue status and on the operations page")

        sub.add_parser("resume", help="let workers take jobs again")

        p = sub.add_parser("clear", help="cancel waiting/delayed jobs, or empty RQ's failed/completed registries")
        p.add_argument(
            "--status",
            action="append",
            help=f"one of {', '.join(queue_control.CLEARABLE)}; repeatable (default: waiting and delayed)",
        )
        p.add_argument("--yes", action="store_true", help="do not ask before canceling jobs")

    def handle(self, *args, action: str, **options):
        try:
            getattr(self, f"_{action}")(**options)
        except ServiceError as exc:
            raise CommandError(exc.message) from None

    def _status(self, *, json, **_):
        status = queue_control.queue_status()
        if json:
            print_json(self.stdout, status)
            return
        self._print_status(status)

    def _pause(self, *, reason, **_):
        status = queue_control.queue_pause(by=f"{getpass.getuser()} (manage.py)", reason=reason)
        self.stdout.write(
            self.style.WARNING("queue paused")
            + f": no worker takes new jobs until `manage.py queue resume`; {status['totals']['active']} running"
            f" will finish, {status['totals']['waiting']} waiting stay queued"
        )

    def _resume(self, **_):
        status = queue_control.queue_resume(by=f"{getpass.getuser()} (manage.py)")
        self.stdout.write(
            self.style.SUCCESS("queue resumed")
            + f": {status['worker_count']} workers, {status['totals']['waiting']} jobs waiting"
        )

    def _clear(self, *, status, yes, **_):
        statuses = status or list(CANCELING)
        for value in statuses:
            choice(value, option="--status", choices=queue_control.CLEARABLE)
        statuses = list(dict.fromkeys(statuses))
        if any(s in CANCELING for s in statuses) and not yes:
            self._confirm(statuses)
        for value in statuses:
            report = queue_control.queue_clear(status=value, on_progress=Progress(self.stdout, f"clearing {value}"))
            if value in CANCELING:
                self.stdout.write(
                    self.style.SUCCESS(f"cleared {value}")
                    + f": {len(report.canceled)} jobs canceled, {report.removed} RQ jobs removed"
                )
            else:
                self.stdout.write(
                    self.style.SUCCESS(f"cleared {value}")
                    + f": {report.removed} RQ jobs removed (job rows and dead letters stay)"
                )

    def _confirm(self, statuses: list[str]) -> None:
        which = " and ".join(s for s in statuses if s in CANCELING)
        if not sys.stdin.isatty():
            raise CommandError(f"refusing to cancel every {which} job without --yes (stdin is not a terminal)")
        totals = queue_control.queue_status()["totals"]
        count = sum(totals[s] for s in statuses if s in CANCELING)
        self.stdout.write(f"Cancel {count} {which} jobs? This cannot be undone. [y/N] ", ending="")
        self.stdout.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            raise CommandError("nothing cleared")

    def _print_status(self, status: dict) -> None:
        if status["paused"]:
            who = f" by {status['paused_by']}" if status["paused_by"] else ""
            since = f" since {status['paused_at']}" if status["paused_at"] else ""
            why = f": {status['reason']}" if status["reason"] else ""
            self.stdout.write(self.style.ERROR(f"PAUSED{since}{who}{why}") + " (manage.py queue resume)")
        else:
            self.stdout.write(self.style.SUCCESS("running") + " (workers take jobs)")
        columns = queue_control.STATUSES
        rows = [[q["name"], *(q[c] for c in columns)] for q in status["queues"]]
        rows.append(["total", *(status["totals"][c] for c in columns)])
        print_table(
            self.stdout, ("QUEUE", *(c.upper() for c in columns)), rows, header_style=self.style.MIGRATE_HEADING
        )
        jobs = status["jobs"]
        self.stdout.write(f"Postgres: {jobs['queued']} queued, {jobs['running']} running, {jobs['retrying']} retrying")
        workers = status["workers"]
        self.stdout.write(self.style.MIGRATE_HEADING(f"workers: {len(workers)}"))
        if workers:
            print_table(
                self.stdout,
                ("NAME", "HOST", "PID", "STATE", "CURRENT JOB", "DONE", "FAILED", "LAST HEARTBEAT"),
                [
                    (
                        w["name"],
                        w["hostname"],
                        w["pid"],
                        w["state"],
                        w["current_job"] or "",
                        w["successful_jobs"],
                        w["failed_jobs"],
                        w["last_heartbeat"] or "",
                    )
                    for w in workers
                ],
                header_style=self.style.MIGRATE_LABEL,
            )
