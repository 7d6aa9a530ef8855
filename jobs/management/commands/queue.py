"""manage.py queue status|pause|resume|intake|clear — RQ queue control for operators.

    queue status [--json]
    queue pause [--reason TEXT]     every worker on every host stops taking jobs; running ones finish
    queue resume
    queue intake off [--reason TEXT] | on    submissions answer 503 intake_closed while off; workers drain
    queue clear [--status waiting|delayed|failed|completed ...] [--dry-run] [--yes] [--reason TEXT]

clear without --status clears waiting and delayed, i.e. cancels every job not yet started.
Every change is written to the audit trail with the OS user who ran it.
"""

from __future__ import annotations

from django.core.management.base import CommandError

from aipb.commands import OperatorCommand, choice
from audit.records import Actor
from jobs import queue_control

CANCELING = ("waiting", "delayed")


class Command(OperatorCommand):
    help = "Queue sizes, pause and resume every worker, clear waiting/delayed/failed/completed jobs."

    def add_subcommands(self, sub):
        p = sub.add_parser("status", help="sizes per status and queue, paused or not, workers")
        p.add_argument("--json", action="store_true", help="print the object GET /api/ai/queue returns")

        p = sub.add_parser("pause", help="stop every worker from taking jobs (survives worker restarts)")
        p.add_argument("--reason", default="", help="shown in queue status and on the operations page")

        sub.add_parser("resume", help="let workers take jobs again")

        p = sub.add_parser("intake", help="close (off) or open (on) intake: while off, submissions answer 503")
        p.add_argument("state", choices=("on", "off"), help="on: accept submissions; off: refuse them")
        p.add_argument("--reason", default="", help="with off: shown in queue status and in the 503's message")

        p = sub.add_parser("clear", help="cancel waiting/delayed jobs, or empty RQ's failed/completed registries")
        p.add_argument(
            "--status",
            action="append",
            help=f"one of {', '.join(queue_control.CLEARABLE)}; repeatable (default: waiting and delayed)",
        )
        p.add_argument("--dry-run", action="store_true", help="say how many each status holds, change nothing")
        p.add_argument("--yes", action="store_true", help="do not ask before canceling jobs")
        p.add_argument("--reason", default="", help="why: kept in the audit trail (at most 500 characters)")

    def _status(self, *, json, **_):
        status = queue_control.queue_status()
        if json:
            self.print_json(status)
            return
        self._print_status(status)

    def _pause(self, *, reason, **_):
        status = queue_control.queue_pause(actor=Actor.of_command(), reason=reason)
        self.stdout.write(
            self.style.WARNING("queue paused")
            + f": no worker takes new jobs until `manage.py queue resume`; {status['totals']['active']} running"
            f" will finish, {status['totals']['waiting']} waiting stay queued"
        )

    def _resume(self, **_):
        status = queue_control.queue_resume(actor=Actor.of_command())
        self.stdout.write(
            self.style.SUCCESS("queue resumed")
            + f": {status['worker_count']} workers, {status['totals']['waiting']} jobs waiting"
        )

    def _intake(self, *, state, reason, **_):
        if state == "on" and reason:
            raise CommandError("--reason goes with `intake off`")
        status = queue_control.queue_intake(open=state == "on", actor=Actor.of_command(), reason=reason)
        waiting = status["totals"]["waiting"]
        if status["intake"]["open"]:
            self.stdout.write(self.style.SUCCESS("intake open") + f": submissions are accepted; {waiting} jobs waiting")
        else:
            self.stdout.write(
                self.style.WARNING("intake closed")
                + f": submissions answer 503 until `manage.py queue intake on`; workers drain {waiting} waiting"
            )

    def _clear(self, *, status, dry_run, yes, reason, **_):
        statuses = status or list(CANCELING)
        for value in statuses:
            choice(value, option="--status", choices=queue_control.CLEARABLE)
        statuses = list(dict.fromkeys(statuses))
        if dry_run:
            totals = queue_control.queue_status()["totals"]
            for value in statuses:
                what = "jobs would be canceled" if value in CANCELING else "RQ jobs would be removed"
                self.stdout.write(f"{value}: {totals[value]} {what}")
            self.stdout.write("dry run: nothing changed")
            return
        canceling = [s for s in statuses if s in CANCELING]
        if canceling:
            which = " and ".join(canceling)
            self.confirm(
                yes=yes,
                action=f"cancel every {which} job",
                question=lambda: (
                    f"Cancel {sum(queue_control.queue_status()['totals'][s] for s in canceling)} {which} jobs?"
                    " This cannot be undone."
                ),
                declined="nothing cleared",
            )
        for value in statuses:
            report = queue_control.queue_clear(
                status=value, on_progress=self.progress(f"clearing {value}"), actor=Actor.of_command(), reason=reason
            )
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

    def _print_status(self, status: dict) -> None:
        if status["paused"]:
            who = f" by {status['paused_by']}" if status["paused_by"] else ""
            since = f" since {status['paused_at']}" if status["paused_at"] else ""
            why = f": {status['reason']}" if status["reason"] else ""
            self.stdout.write(self.style.ERROR(f"PAUSED{since}{who}{why}") + " (manage.py queue resume)")
        else:
            self.stdout.write(self.style.SUCCESS("running") + " (workers take jobs)")
        intake = status["intake"]
        if not intake["open"]:
            who = f" by {intake['closed_by']}" if intake["closed_by"] else ""
            why = f": {intake['reason']}" if intake["reason"] else ""
            self.stdout.write(
                self.style.ERROR(f"INTAKE CLOSED since {intake['closed_at']}{who}{why}")
                + " (manage.py queue intake on)"
            )
        columns = queue_control.STATUSES
        rows = [[q["name"], *(q[c] for c in columns)] for q in status["queues"]]
        rows.append(["total", *(status["totals"][c] for c in columns)])
        self.print_table(("QUEUE", *(c.upper() for c in columns)), rows)
        jobs = status["jobs"]
        self.stdout.write(f"Postgres: {jobs['queued']} queued, {jobs['running']} running, {jobs['retrying']} retrying")
        workers = status["workers"]
        self.stdout.write(self.style.MIGRATE_HEADING(f"workers: {len(workers)}"))
        if workers:
            self.print_table(
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
