"""manage.py jobs list|view|retry|cancel|delete — the operator's view of AI jobs.

    jobs list [--status S] [--provider P] [--model M] [--error-type T] [--owner NAME]
              [--since DATE] [--until DATE] [--limit N] [--offset N] [--json]
    jobs view ID [--json]
    jobs retry ID [--reason TEXT]
    jobs retry --status dead [--error-type T] [--since DATE] [--dry-run] [--yes] [--reason TEXT]
    jobs cancel ID [--reason TEXT]
    jobs delete ID [--yes] [--reason TEXT]

ID is a job's UUID or its first few hex digits (at least 4) when they name one job.
--json prints the objects the API returns (a JSON array for list, the object for view).
retry, cancel and delete are written to the audit trail with the OS user who ran them.
"""

from __future__ import annotations

from django.core.management.base import CommandError
from django.utils import timezone

from aipb.api import ListParams
from aipb.commands import (
    MIN_ID_PREFIX,
    OPERATOR,
    OperatorCommand,
    age,
    choice,
    clip,
    parse_int,
    parse_when,
    resolve_id,
    user_named,
)
from audit.records import Actor
from jobs import actions, selectors
from jobs.catalogue import PROVIDER_IDS
from jobs.errors import ErrorType
from jobs.models import AIJob, JobStatus
from jobs.serializers import JobOutputSerializer, JobSummarySerializer

LIST_MAX = 1000
OFFSET_MAX = ListParams().fields["offset"].max_value  # the API's bound: deeper pages are slow scans
ID_HELP = f"the job's UUID, or its first {MIN_ID_PREFIX} or more hex digits"
REASON_HELP = "why: kept in the audit trail (at most 500 characters)"


class Command(OperatorCommand):
    help = "List, inspect, retry, cancel and delete AI jobs."

    def add_subcommands(self, sub):
        p = sub.add_parser("list", help="newest jobs first")
        p.add_argument("--status", help=f"one of {', '.join(JobStatus.values)}")
        p.add_argument("--provider", help=f"one of {', '.join(PROVIDER_IDS)}")
        p.add_argument("--model")
        p.add_argument("--error-type", dest="error_type", help="e.g. RATE_LIMIT, AUTH_ERROR")
        p.add_argument("--owner", metavar="USERNAME", help="only this user's jobs")
        p.add_argument("--since", help="created at or after this date or date-time")
        p.add_argument("--until", help="created before this date-time, or up to the end of this date")
        p.add_argument("--limit", default="50", help=f"how many (1 to {LIST_MAX}, default 50)")
        p.add_argument("--offset", default="0", help="skip this many first (the next page)")
        p.add_argument("--json", action="store_true", help="print a JSON array, as the API returns")

        p = sub.add_parser("view", help="one job with its attempts")
        p.add_argument("job_id", metavar="ID", help=ID_HELP)
        p.add_argument("--json", action="store_true", help="print the job object, as the API returns")

        p = sub.add_parser("retry", help="retry one dead or canceled job, or all of them with --status")
        p.add_argument("job_id", metavar="ID", nargs="?", help=ID_HELP)
        p.add_argument("--status", help="bulk: retry every job in this status (dead or canceled)")
        p.add_argument("--error-type", dest="error_type", help="bulk: only jobs that died of this error type")
        p.add_argument("--since", help="bulk: only jobs that finished at or after this date or date-time")
        p.add_argument("--dry-run", action="store_true", help="bulk: say how many would be retried, change nothing")
        p.add_argument("--yes", action="store_true", help="bulk: do not ask for confirmation")
        p.add_argument("--reason", default="", help=REASON_HELP)

        p = sub.add_parser("cancel", help="cancel a queued or retrying job")
        p.add_argument("job_id", metavar="ID", help=ID_HELP)
        p.add_argument("--reason", default="", help=REASON_HELP)

        p = sub.add_parser("delete", help="delete a job that is not running (its attempts and results go with it)")
        p.add_argument("job_id", metavar="ID", help=ID_HELP)
        p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        p.add_argument("--reason", default="", help=REASON_HELP)

    # --- reads ---

    def _list(self, *, status, provider, model, error_type, owner, since, until, limit, offset, json, **_):
        filters = {
            "status": choice(status, option="--status", choices=JobStatus.values),
            "provider": choice(provider, option="--provider", choices=PROVIDER_IDS),
            "model": model,
            "error_type": choice(error_type, option="--error-type", choices=ErrorType.values),
        }
        since_at = parse_when(since, option="--since") if since else None
        until_at = parse_when(until, option="--until", end_of_day=True) if until else None
        if since_at and until_at and since_at >= until_at:
            raise CommandError(f"--since ({since}) must be before --until ({until})")
        limit = parse_int(limit, option="--limit", minimum=1, maximum=LIST_MAX)
        offset = parse_int(offset, option="--offset", minimum=0, maximum=OFFSET_MAX)
        jobs = selectors.job_list(user=OPERATOR, filters=filters)
        if owner is not None:
            jobs = jobs.filter(owner=user_named(owner))
        if since_at:
            jobs = jobs.filter(created_at__gte=since_at)
        if until_at:
            jobs = jobs.filter(created_at__lt=until_at)
        jobs = list(jobs[offset : offset + limit])
        if json:
            self.print_json(JobSummarySerializer(jobs, many=True).data)
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
                clip(job.prompt, 40),
            )
            for job in jobs
        ]
        self.print_table(
            ("ID", "STATUS", "PROVIDER", "MODEL", "PRIORITY", "ATTEMPTS", "AGE", "OWNER", "ERROR", "PROMPT"),
            rows,
            styles={1: self._status_style},
        )

    def _view(self, *, job_id, json, **_):
        job = selectors.job_get(user=OPERATOR, job_id=self._job_id(job_id))
        if json:
            self.print_json(JobOutputSerializer(job).data)
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
            ("prompt", clip(job.prompt, 200)),
            ("result", _result_summary(job.result)),
        ]
        for name, value in fields:
            if value:
                self.stdout.write(f"  {label(name.ljust(13))}{value}")
        attempts = list(job.attempt_set.all())
        if not attempts:
            return
        self.stdout.write(self.style.MIGRATE_HEADING("attempts"))
        self.print_table(
            ("#", "OUTCOME", "ERROR", "LATENCY", "TOKENS IN/OUT", "STARTED", "MESSAGE"),
            [
                (
                    a.number,
                    a.outcome,
                    a.error_type,
                    f"{a.latency_ms} ms" if a.latency_ms is not None else "",
                    f"{a.prompt_tokens}/{a.completion_tokens}",
                    a.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                    clip(a.error_message, 60),
                )
                for a in attempts
            ],
            header_style=self.style.MIGRATE_LABEL,
            styles={1: self._status_style},
        )

    # --- writes ---

    def _retry(self, *, job_id, status, error_type, since, dry_run, yes, reason, **_):
        bulk = status is not None
        if job_id is not None and (bulk or error_type or since or dry_run):
            raise CommandError("give either a job ID or --status for a bulk retry, not both")
        if job_id is None and not bulk:
            raise CommandError("give a job ID, or --status dead to retry every dead job")
        if not bulk:
            job = actions.job_retry(job_id=self._job_id(job_id), actor=Actor.of_command(), reason=reason)
            self.stdout.write(
                self.style.SUCCESS(f"job {job.id} queued again")
                + f" ({job.max_attempts} more attempts; {job.attempts} so far)"
            )
            return
        choice(status, option="--status", choices=[str(s) for s in actions.BULK_RETRY_STATUSES])
        choice(error_type, option="--error-type", choices=ErrorType.values)
        since_at = parse_when(since, option="--since") if since else None
        selection = {"status": status, "error_type": error_type, "since": since_at}
        if dry_run:
            report = actions.jobs_retry_bulk(**selection, dry_run=True)
            self.stdout.write(f"would retry {report.matched} {status} jobs (dry run: nothing changed)")
            return
        self.confirm(
            yes=yes,
            action=f"retry every {status} job",
            question=lambda: f"Retry {actions.jobs_retry_bulk(**selection, dry_run=True).matched} {status} jobs?",
            declined="nothing retried",
        )
        report = actions.jobs_retry_bulk(
            **selection, on_progress=self.progress("retrying"), actor=Actor.of_command(), reason=reason
        )
        message = f"retried {len(report.retried)} of {report.matched} {status} jobs"
        self.stdout.write(self.style.SUCCESS(message) if report.retried else message)
        if report.conflicted:
            self.stdout.write(
                self.style.WARNING(f"{len(report.conflicted)} changed meanwhile and were left alone: ")
                + ", ".join(report.conflicted[:20])
                + (" ..." if len(report.conflicted) > 20 else "")
            )

    def _cancel(self, *, job_id, reason, **_):
        job = actions.job_cancel(job_id=self._job_id(job_id), actor=Actor.of_command(), reason=reason)
        self.stdout.write(self.style.SUCCESS(f"job {job.id} canceled"))

    def _delete(self, *, job_id, yes, reason, **_):
        job = selectors.job_get(user=OPERATOR, job_id=self._job_id(job_id), with_attempts=False)
        self.confirm(
            yes=yes,
            action=f"delete job {job.id}",
            question=(
                f"Delete job {job.id} ({job.status}, owner {job.owner.get_username()}, created {_when(job.created_at)})"
                " with its attempts and result? This cannot be undone."
            ),
            declined="not deleted",
        )
        actions.job_delete(job_id=job.id, actor=Actor.of_command(), reason=reason)
        self.stdout.write(self.style.SUCCESS(f"job {job.id} deleted"))

    # --- helpers ---

    def _job_id(self, value: str):
        return resolve_id(value, queryset=AIJob.objects.all(), what="job")

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
