"""manage.py dlq list|stats|retry|discard|prune — the dead-letter queue for operators and scripts.

dlq retry --all [--error-type T] [--provider P] [--model M] [--dry-run] [--yes] [--json] [--reason TEXT]

retry and discard are written to the audit trail with the OS user who ran them (and --reason).
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import CommandError
from rest_framework import serializers

from aipb.commands import OperatorCommand, clip
from audit.records import Actor
from dlq import records, selectors, services
from dlq.apis import DeadLetterFilters, DeadLetterListParams
from dlq.serializers import DeadLetterOutputSerializer, DeadLetterStatsSerializer

MESSAGE_WIDTH = 60
REASON_HELP = "why: kept in the audit trail (at most 500 characters)"


def _one_line(errors: object) -> str:
    """The first validation error as `--option: reason`."""
    if isinstance(errors, dict):
        for key, value in errors.items():
            option = "--" + key.replace("_", "-")
            return f"{option}: {_one_line(value)}"
    if isinstance(errors, list) and errors:
        return _one_line(errors[0])
    return str(errors)


def _validated(serializer_class: type[serializers.Serializer], data: dict) -> dict:
    data = {key: value for key, value in data.items() if value is not None}
    checked = serializer_class(data=data)
    if not checked.is_valid():
        raise CommandError(f"invalid {_one_line(checked.errors)}")
    return dict(checked.validated_data)


class Command(OperatorCommand):
    help = "Inspect, retry, discard and prune dead letters (jobs that gave up)."

    def add_subcommands(self, sub):
        p = sub.add_parser("list", help="dead letters, newest first")
        p.add_argument("--limit", default="50", help="how many (1-500, default 50)")
        p.add_argument("--offset", default="0", help="skip this many first")
        p.add_argument("--error-type", help="e.g. TIMEOUT, AUTH_ERROR")
        p.add_argument("--status", help="open, retried or discarded")
        p.add_argument("--provider")
        p.add_argument("--model")
        p.add_argument("--json", action="store_true", help="print a JSON array of the API's entry objects")

        p = sub.add_parser("stats", help="counts of kept and open entries")
        p.add_argument("--json", action="store_true", help="print the API's stats object")

        p = sub.add_parser("retry", help="re-queue one entry's job, or every open entry with --all")
        p.add_argument("id", nargs="?", help="the dead letter id")
        p.add_argument("--all", action="store_true", help="retry every open entry matching the filters")
        p.add_argument("--error-type", help="with --all: only this error type")
        p.add_argument("--provider", help="with --all: only this provider")
        p.add_argument("--model", help="with --all: only this model")
        p.add_argument("--dry-run", action="store_true", help="with --all: count, change nothing")
        p.add_argument("--yes", action="store_true", help="with --all: do not ask for confirmation")
        p.add_argument("--json", action="store_true")
        p.add_argument("--reason", default="", help=REASON_HELP)

        p = sub.add_parser("discard", help="mark one open entry discarded (the job stays dead)")
        p.add_argument("id", help="the dead letter id")
        p.add_argument("--json", action="store_true")
        p.add_argument("--reason", default="", help=REASON_HELP)

        p = sub.add_parser("prune", help="apply retention now (AI_DLQ_MAX_ENTRIES, AI_DLQ_MAX_AGE_DAYS)")
        p.add_argument("--json", action="store_true")

    # --- subcommands ---

    def _list(self, **options) -> None:
        params = _validated(
            DeadLetterListParams,
            {
                "limit": options["limit"],
                "offset": options["offset"],
                "error_type": options["error_type"],
                "status": options["status"],
                "provider": options["provider"],
                "model": options["model"],
            },
        )
        limit, offset = params.pop("limit"), params.pop("offset")
        entries = list(selectors.dlq_list(filters=params)[offset : offset + limit])
        rows = DeadLetterOutputSerializer(entries, many=True).data
        if options["json"]:
            self.print_json(rows)
            return
        if not rows:
            self.stdout.write("no dead letters match")
            return
        table = [
            [
                str(row["id"]),
                row["status"],
                row["error_type"],
                "yes" if row["retryable"] else "no",
                str(row["attempts"]),
                f"{row['provider']}/{row['model']}",
                row["job_id"],
                row["created_at"],
                clip(row["error_message"], MESSAGE_WIDTH),
            ]
            for row in rows
        ]
        header = ["ID", "STATUS", "ERROR", "RETRYABLE", "ATTEMPTS", "PROVIDER/MODEL", "JOB", "CREATED", "MESSAGE"]
        self.print_table(header, table, styles={1: self._status_style})

    def _stats(self, **options) -> None:
        data = DeadLetterStatsSerializer(selectors.dlq_stats()).data
        if options["json"]:
            self.print_json(data)
            return
        width = 15
        self.stdout.write(f"{'total':<{width}} {data['total']}")
        self.stdout.write(
            f"{'open':<{width}} {data['open']} (retryable {data['retryable']}, non-retryable {data['non_retryable']})"
        )
        self.stdout.write(f"{'oldest open':<{width}} {data['oldest_at'] or '-'}")
        self.stdout.write(f"{'newest open':<{width}} {data['newest_at'] or '-'}")
        groups = (("by error type", "by_error_type"), ("by provider", "by_provider"), ("by model", "by_model"))
        for title, key in groups:
            counts = data[key]
            if not counts:
                continue
            self.stdout.write(self.style.MIGRATE_HEADING(f"open {title}"))
            name_width = max(len(name) for name in counts)
            for name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
                self.stdout.write(f"  {name:<{name_width}} {count:>6}")

    def _retry(self, **options) -> None:
        filters = {"error_type": options["error_type"], "provider": options["provider"], "model": options["model"]}
        if options["all"]:
            if options["id"] is not None:
                raise CommandError("give either an id or --all, not both")
            filters = _validated(DeadLetterFilters, filters)
            if options["dry_run"]:
                matched = selectors.dlq_list(filters={**filters, "status": "open"}).count()
                if options["json"]:
                    self.print_json({"matched": matched, "dry_run": True})
                else:
                    self.stdout.write(f"would retry {_count(matched)} (dry run: nothing changed)")
                return
            scope = ", ".join(["open", *(f"{key.replace('_', ' ')} {value}" for key, value in filters.items())])
            self.confirm(
                yes=options["yes"],
                action=f"retry every dead letter ({scope})",
                question=lambda: (
                    f"Retry {_count(selectors.dlq_list(filters={**filters, 'status': 'open'}).count())} ({scope})?"
                    " Their jobs are queued again with a fresh attempt budget."
                ),
                declined="nothing retried",
            )
            result = services.dlq_retry_bulk(
                filters=filters,
                actor=Actor.of_command(),
                reason=options["reason"],
                on_progress=self.progress("retrying"),
            )
            if options["json"]:
                self.print_json(result.as_dict())
            else:
                self.stdout.write(
                    self.style.SUCCESS(f"retried {_count(result.retried)}") + f" ({result.skipped} skipped)"
                )
            return
        if options["id"] is None:
            raise CommandError("give a dead letter id, or --all")
        if any(value is not None for value in filters.values()):
            raise CommandError("--error-type, --provider and --model filter --all; they do not apply to one id")
        if options["dry_run"]:
            raise CommandError("--dry-run goes with --all; to see one entry, use `dlq list`")
        entry, job = services.dlq_retry(entry_id=options["id"], actor=Actor.of_command(), reason=options["reason"])
        if options["json"]:
            self.print_json({"dlq_id": entry.id, "job_id": str(job.id), "status": job.status})
        else:
            self.stdout.write(self.style.SUCCESS(f"dead letter {entry.id} retried: job {job.id} is {job.status}"))

    def _discard(self, **options) -> None:
        entry = services.dlq_discard(entry_id=options["id"], actor=Actor.of_command(), reason=options["reason"])
        if options["json"]:
            self.print_json(DeadLetterOutputSerializer(entry).data)
        else:
            self.stdout.write(self.style.SUCCESS(f"dead letter {entry.id} discarded (job {entry.job_uuid} stays dead)"))

    def _prune(self, **options) -> None:
        result = records.dlq_prune()
        if options["json"]:
            self.print_json(result.as_dict())
            return
        age = settings.AI_DLQ_MAX_AGE_DAYS
        self.stdout.write(
            f"pruned {_count(result.deleted)}: {result.expired} older than "
            + (f"{age} days" if age else "the age limit (none set)")
            + f", {result.over_cap} beyond the newest {settings.AI_DLQ_MAX_ENTRIES}"
        )

    def _status_style(self, value: str) -> str:
        style = {"open": self.style.WARNING, "retried": self.style.SUCCESS}.get(value.strip())
        return style(value) if style else value


def _count(n: int) -> str:
    return f"{n} dead letter{'' if n == 1 else 's'}"
