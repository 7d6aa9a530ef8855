"""manage.py jobs list|view|retry|cancel|delete — the operator's view of AI jobs.

    jobs list [--status S] [--provider P] [--model M] [--error-type T] [--limit N] [--json]
    jobs view ID [--json]
    jobs retry ID
    jobs retry --status dead [--error-type T] [--since DATE] [--dry-run]
    jobs cancel ID
    jobs delete ID [--yes]

--json prints the objects the API returns (a JSON array for list, the object for view).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from aipb.exceptions import ServiceError
from jobs import actions, selectors
from jobs.catalogue import PROVIDER_IDS
from jobs.errors import ErrorType
from jobs.management.output import (
    Progress,
    age,
    choice,
    parse_limit,
    parse_uuid,
    parse_when,
    print_json,
    print_table,
)
from jobs.models import JobStatus
from jobs.serializers import JobOutputSerializer, JobSummarySerializer

# The command runs as an operator, who sees every job (the selectors' staff view).
OPERATOR = SimpleNamespace(is_staff=True)
LIST_MAX = 1000


class Command(BaseCommand):
    help = "List, inspect, retry, cancel and delete AI jobs."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="{list,view,retry,cancel,delete}")

        p = sub.add_parser("list", help="newest jobs first")
        p.add_argument("--status", help=f"one of {', '.join(JobStatus.values)}")
        p.add_argument("--provider", help=f"one of {', '.join(PROVIDER_IDS)}")
        p.add_argument("--model")
        p.add_argument("--error-type", dest="error_type", help="e.g. RATE_LIMIT, AUTH_ERROR")
        p.add_argument("--limit", default="50", help=f"how many (1 to {LIST_MAX}, default 50)")
        p.add_argument("--json", action="store_true", help="print a JSON array, as the API returns")

        p = sub.add_parser("view", help="one job with its attempts")
        p.add_argument("job_id", metavar="ID")
        p.add_argument("--json", action="store_true", help="print the job object, as the API returns")

        p = sub.add_parser("retry", help="retry one dead or canceled job, or all of them with --status")
        p.add_argument("job_id", metavar="ID", nargs="?")
        p.add_argument("--status", help="bulk: retry every job in this status (dead or canceled)")
        p.add_argument("--error-type", dest="error_type", help="bulk: only jobs that died of this error type")
        p.add_argument("--since", help="bulk: only jobs that finished at or after this date or date-time")
        p.add_argument("--dry-run", action="store_true", help="bulk: say how many would be retried, change nothing")

        p = sub.add_parser("cancel", help="cancel a queued or retrying job")
        p.add_argument("job_id", metavar="ID")

        p = sub.add_parser("delete", help="delete a job that is not running (its attempts and results go with it)")
        p.add_argument("job_id", metavar="ID")
        p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    def handle(self, *args, action: str, **options):
        try:
            getattr(self, f"_{action}")(**options)
        except ServiceError as exc:
            raise CommandError(exc.message) from None

    # --- reads ---

    def _list(self, *, status, provider, model, error_type, limit, json, **_):
        filters = {
            "status": choice(status, option="--status", choices=JobStatus.values),
            "provider": choice(provider, option="--provider", choices=PROVIDER_IDS),
            "model": model,
            "error_type": choice(error_type, option="--error-type", choices=ErrorType.values),
        }
        limit = parse_limit(limit, maximum=LIST_MAX)
        jobs = list(selectors.job_list(user=OPERATOR, filters=filters)[:limit])
        if json:
            print_json(self.stdout, JobSummarySerializer(jobs, many=True).data)
            return
        if not jobs:
            self.stdout.write("no jobs match")
            return
        rows = [
            (
                job.id,
                job.status,
                job.provider,
                job.model,
                job.priority,
                f"{job.attempts}/{job.max_attempts}",
                age(job.created_at),
                job.owner.get_username(),
                job.error_type,
                _excerpt(job.prompt, 40),
            )
            for job in jobs
        ]
        print_table(
            self.stdout,
            ("ID", "STATUS", "PROVIDER", "MODEL", "PRIORITY", "ATTEMPTS", "AGE", "OWNER", "ERROR", "PROMPT"),
            rows,
            header_style=self.style.MIGRATE_HEADING,
            cell_styles={1: self._status_style},
        )

    def _view(self, *, job_id, json, **_):
        job = selectors.job_get(user=OPERATOR, job_id=parse_uuid(job_id))
        if json:
            print_json(self.stdout, JobOutputSerializer(job).data)
            return
        label = self.style.MIGRATE_LABEL
        self.stdout.write(self.style.MIGRATE_HEADING(f"job {job.id}"))
        fields = [
            ("status", self._status_style(job.status)),
            ("owner", job.owner.get_username()),
            ("provider", f"{job.provider} / {job.model}"),
            ("priority", job.priority),
            ("attempts", f"{job.attempts} so far, budget {job.max_attempts} per try"),
            ("created", _when(job.created_at)),
            ("started", _when(job.started_at)),
            ("finished", _when(job.finished_at)),
            ("next attempt", _when(job.next_attempt_at)),
            ("error", f"{job.error_type}: {job.error_message}" if job.error_type else ""),
            ("prompt", _excerpt(job.prompt, 200)),
            ("result", _result_summary(job.result)),
        ]
        for name, value in fields:
            if value:
                self.stdout.write(f"  {label(name.ljust(13))}{value}")
        attempts = list(job.attempt_set.all())
        if not attempts:
            return
        self.stdout.write(self.style.MIGRATE_HEADING("attempts"))
        print_table(
            self.stdout,
            ("#", "OUTCOME", "ERROR", "LATENCY", "TOKENS IN/OUT", "STARTED", "MESSAGE"),
            [
                (
                    a.number,
                    a.outcome,
                    a.error_type,
                    f"{a.latency_ms} ms" if a.latency_ms is not None else "",
                    f"{a.prompt_tokens}/{a.completion_tokens}",
                    a.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                    _excerpt(a.error_message, 60),
                )
                for a in attempts
            ],
            header_style=self.style.MIGRATE_LABEL,
            cell_styles={1: self._status_style},
        )

    # --- writes ---

    def _retry(self, *, job_id, status, error_type, since, dry_run, **_):
        bulk = status is not None
        if job_id is not None and (bulk or error_type or since or dry_run):
            raise CommandError("give either a job ID or --status for a bulk retry, not both")
        if job_id is None and not bulk:
            raise CommandError("give a job ID, or --status dead to retry every dead job")
        if not bulk:
            job = actions.job_retry(job_id=parse_uuid(job_id))
            self.stdout.write(
                self.style.SUCCESS(f"job {job.id} queued again")
                + f" ({job.max_attempts} more attempts; {job.attempts} so far)"
            )
            return
        choice(status, option="--status", choices=[str(s) for s in actions.BULK_RETRY_STATUSES])
        choice(error_type, option="--error-type", choices=ErrorType.values)
        since_at = parse_when(since, option="--since") if since else None
        report = actions.jobs_retry_bulk(
            status=status,
            error_type=error_type,
            since=since_at,
            dry_run=dry_run,
            on_progress=Progress(self.stdout, "retrying"),
        )
        if dry_run:
            self.stdout.write(f"would retry {report.matched} {status} jobs (dry run: nothing changed)")
            return
        message = f"retried {len(report.retried)} of {report.matched} {status} jobs"
        self.stdout.write(self.style.SUCCESS(message) if report.retried else message)
        if report.conflicted:
            self.stdout.write(
                self.style.WARNING(f"{len(report.conflicted)} changed meanwhile and were left alone: ")
                + ", ".join(report.conflicted[:20])
                + (" ..." if len(report.conflicted) > 20 else "")
            )

    def _cancel(self, *, job_id, **_):
        job = actions.job_cancel(job_id=parse_uuid(job_id))
        self.stdout.write(self.style.SUCCESS(f"job {job.id} canceled"))

    def _delete(self, *, job_id, yes, **_):
        job = selectors.job_get(user=OPERATOR, job_id=parse_uuid(job_id), with_attempts=False)
        if not yes:
            if not sys.stdin.isatty():
                raise CommandError(f"refusing to delete job {job.id} without --yes (stdin is not a terminal)")
            self.stdout.write(
                f"Delete job {job.id} ({job.status}, owner {job.owner.get_username()}, created {_when(job.created_at)})"
                " with its attempts and result? This cannot be undone. [y/N] ",
                ending="",
            )
            self.stdout.flush()
            answer = sys.stdin.readline().strip().lower()
            if answer not in ("y", "yes"):
                raise CommandError("not deleted")
        actions.job_delete(job_id=job.id)
        self.stdout.write(self.style.SUCCESS(f"job {job.id} deleted"))

    def _status_style(self, value: str) -> str:
        stripped = value.strip()
        style = {
            JobStatus.SUCCEEDED: self.style.SUCCESS,
            JobStatus.DEAD: self.style.ERROR,
            JobStatus.RETRYING: self.style.WARNING,
            JobStatus.RUNNING: self.style.HTTP_INFO,
            "failed": self.style.ERROR,
            "abandoned": self.style.WARNING,
        }.get(stripped)
        return style(value) if style else value


def _excerpt(text: str, width: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _when(moment) -> str:
    if moment is None:
        return ""
    now = timezone.now()
    relative = f"in {age(now, moment)}" if moment > now else f"{age(moment, now)} ago"
    return f"{moment.strftime('%Y-%m-%d %H:%M:%S %Z')} ({relative})"


def _result_summary(result) -> str:
    if not result:
        return ""
    if isinstance(result, dict):
        sections = result.get("sections")
        count = len(sections) if isinstance(sections, list) else 0
        return f"page {result.get('title', '')!r} with {count} sections (--json shows it whole)"
    return "(--json shows it)"
