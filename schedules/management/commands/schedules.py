"""manage.py schedules list|run-now|pause|resume|run — saved job or batch templates fired on a cron expression.

schedules list [--owner USER] [--paused | --active] [--limit N] [--json]
schedules run-now|pause|resume ID [--reason TEXT] [--json]     (ID: a UUID or its first 4+ hex digits)
schedules run [--once] [--every SECONDS] [--json]               the scheduler (`make run` starts one)

run-now, pause and resume are written to the audit trail with the OS user who ran them (and --reason).
"""

from __future__ import annotations

import signal
import threading

from django.conf import settings
from django.core.management.base import CommandError

from aipb.commands import OperatorCommand, age, clip, parse_int, resolve_id
from audit.records import Actor
from schedules import selectors, services
from schedules.models import Schedule
from schedules.scheduler import TickReport, scheduler_run, scheduler_tick
from schedules.serializers import FiringOutputSerializer, ScheduleDetailSerializer, ScheduleOutputSerializer

PROMPT_WIDTH = 40
REASON_HELP = "why: kept in the audit trail (at most 500 characters)"


def _kind(row: dict) -> str:
    return f"batch/{len(row['batch']['jobs'])}" if row["kind"] == "batch" else "job"


class Command(OperatorCommand):
    help = "List, run now, pause and resume schedules, and run the scheduler that fires them."

    def add_subcommands(self, sub):
        p = sub.add_parser("list", help="schedules, newest first")
        p.add_argument("--owner", help="only this user's")
        state = p.add_mutually_exclusive_group()
        state.add_argument("--paused", action="store_true", help="only paused ones")
        state.add_argument("--active", action="store_true", help="only active ones")
        p.add_argument("--limit", default="50", help="how many (1-500, default 50)")
        p.add_argument("--json", action="store_true", help="print a JSON array of the API's schedule objects")

        for verb, text in (
            ("run-now", "submit the schedule's job (or batch) now (its cron firings go on)"),
            ("pause", "stop firing until resumed"),
            ("resume", "fire again, from the first instant after now"),
        ):
            p = sub.add_parser(verb, help=text)
            p.add_argument("id", help="the schedule id, or its first 4+ hex digits")
            p.add_argument("--reason", default="", help=REASON_HELP)
            p.add_argument("--json", action="store_true")

        p = sub.add_parser("run", help="the scheduler: fire due schedules every --every seconds until stopped")
        p.add_argument("--once", action="store_true", help="one tick, then exit")
        p.add_argument("--every", default=None, help="seconds between ticks (default AI_SCHEDULER_TICK_SECONDS)")
        p.add_argument("--json", action="store_true", help="print each tick's report as one JSON line")

    # --- subcommands ---

    def _list(self, **options) -> None:
        limit = parse_int(options["limit"], option="--limit", minimum=1, maximum=500)
        paused = True if options["paused"] else False if options["active"] else None
        owner = options["owner"]
        if owner is not None and (not owner.strip() or len(owner) > 150):
            raise CommandError(f"--owner must be a username, not {owner!r}")
        rows = ScheduleOutputSerializer(
            selectors.schedule_list(user=None, filters={"paused": paused, "owner": owner})[:limit], many=True
        ).data
        if options["json"]:
            self.print_json(rows)
            return
        if not rows:
            self.stdout.write("no schedules match")
            return
        table = [
            [
                row["id"],
                row["owner"],
                "paused" if row["paused"] else "active",
                row["cron"],
                row["timezone"],
                row["next_fire_at"] or "-",
                row["last_fired_at"] or "-",
                _kind(row),
                f"{row['provider']}/{row['model']}" if row["kind"] == "job" else "-",
                clip(row["name"] or row["prompt"] or f"batch of {len(row['batch']['jobs'])}", PROMPT_WIDTH),
            ]
            for row in rows
        ]
        header = ["ID", "OWNER", "STATE", "CRON", "TIMEZONE", "NEXT", "LAST", "KIND", "PROVIDER/MODEL", "NAME/PROMPT"]
        self.print_table(header, table)

    def _id(self, value: str):
        return resolve_id(value, queryset=Schedule.objects.all(), what="schedule")

    def _run_now(self, **options) -> None:
        firing = services.schedule_run_now(
            schedule_id=self._id(options["id"]), actor=Actor.of_command(), reason=options["reason"]
        )
        data = FiringOutputSerializer(firing).data
        if options["json"]:
            self.print_json(data)
            return
        if data["outcome"] == "failed":
            what = "batch" if firing.schedule.kind == "batch" else "job"
            raise CommandError(f"schedule fired but its {what} was refused: {data['error']}")
        made = f"batch {data['batch_id']}" if data["batch_id"] else f"job {data['job_id']}"
        self.stdout.write(f"fired {firing.schedule_id} ({firing.schedule.kind} template): {made}")

    def _pause(self, **options) -> None:
        self._state(services.schedule_pause, options)

    def _resume(self, **options) -> None:
        self._state(services.schedule_resume, options)

    def _state(self, action, options) -> None:
        schedule = action(schedule_id=self._id(options["id"]), actor=Actor.of_command(), reason=options["reason"])
        if options["json"]:
            self.print_json(ScheduleDetailSerializer(schedule).data)
            return
        if schedule.paused:
            self.stdout.write(f"schedule {schedule.id} ({schedule.kind} template) is paused")
        else:
            self.stdout.write(
                f"schedule {schedule.id} ({schedule.kind} template) is active; "
                f"next firing {schedule.next_fire_at:%Y-%m-%d %H:%M}Z"
            )

    def _run(self, **options) -> None:
        every = settings.AI_SCHEDULER_TICK_SECONDS
        if options["every"] is not None:
            try:
                every = float(options["every"])
            except ValueError:
                every = -1.0
            if not 0.1 <= every <= 3600:
                raise CommandError(f"--every must be a number of seconds from 0.1 to 3600, not {options['every']!r}")
        as_json = options["json"]
        if options["once"]:
            self._print_tick(scheduler_tick(), as_json=as_json, quiet_when_idle=False)
            return
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):  # finish the tick in hand, then exit
            signal.signal(sig, lambda *_: stop.set())
        self.stderr.write(f"scheduler: ticking every {every:g}s")
        scheduler_run(
            stop=stop,
            every=every,
            on_tick=lambda report: self._print_tick(report, as_json=as_json, quiet_when_idle=True),
            on_error=lambda exc: self.stderr.write(f"scheduler: {exc.__class__.__name__}: {exc}; trying again"),
        )
        self.stderr.write("scheduler: stopped")

    def _print_tick(self, report: TickReport, *, as_json: bool, quiet_when_idle: bool) -> None:
        if as_json:
            self.print_json(report.as_dict(), one_line=True)
            return
        counts = report.as_dict()
        if quiet_when_idle and not report.fired and not report.skipped:
            return
        self.stdout.write(
            f"scheduler: {counts['submitted']} submitted, {counts['failed']} failed, {counts['skipped']} skipped"
        )
        for firing in report.fired:
            late = age(firing["scheduled_for"], report.at)
            detail = (
                firing["job_id"] or (firing["batch_id"] and f"batch {firing['batch_id']}") or clip(firing["error"], 80)
            )
            self.stdout.write(f"  {firing['outcome']:9} {firing['schedule_id']} (due {late} ago) {detail}")
