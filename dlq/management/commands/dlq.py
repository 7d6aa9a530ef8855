"""manage.py dlq list|stats|retry|discard|prune — the dead-letter queue for operators and scripts."""

from __future__ import annotations

import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from rest_framework import serializers

from aipb.exceptions import ServiceError
from dlq import records, selectors, services
from dlq.apis import DeadLetterFilters, DeadLetterListParams
from dlq.serializers import DeadLetterOutputSerializer, DeadLetterStatsSerializer

MESSAGE_WIDTH = 60


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


class Command(BaseCommand):
    help = "Inspect, retry, discard and prune dead letters (jobs that gave up)."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="{list,stats,retry,discard,prune}")

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
        p.add_argument("--json", action="store_true")

        p = sub.add_parser("discard", help="mark one open entry discarded (the job stays dead)")
        p.add_argument("id", help="the dead letter id")
        p.add_argument("--json", action="store_true")

        p = sub.add_parser("prune", help="apply retention now (AI_DLQ_MAX_ENTRIES, AI_DLQ_MAX_AGE_DAYS)")
        p.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        try:
            getattr(self, f"_{options['action']}")(options)
        except ServiceError as exc:
            raise CommandError(exc.message) from None

    def _json(self, data: object) -> None:
        self.stdout.write(json.dumps(data))

    # --- subcommands ---

    def _list(self, options: dict) -> None:
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
            self._json(rows)
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
                _clip(row["error_message"]),
            ]
            for row in rows
        ]
        header = ["ID", "STATUS", "ERROR", "RETRYABLE", "ATTEMPTS", "PROVIDER/MODEL", "JOB", "CREATED", "MESSAGE"]
        self._table(header, table, status_column=1)

    def _stats(self, options: dict) -> None:
        data = DeadLetterStatsSerializer(selectors.dlq_stats()).data
        if options["json"]:
            self._json(data)
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

    def _retry(self, options: dict) -> None:
        filters = {"error_type": options["error_type"], "provider": options["provider"], "model": options["model"]}
        if options["all"]:
            if options["id"] is not None:
                raise CommandError("give either an id or --all, not both")
            result = services.dlq_retry_bulk(filters=_validated(DeadLetterFilters, filters))
            if options["json"]:
                self._json(result.as_dict())
            else:
                self.stdout.write(
                    self.style.SUCCESS(f"retried {_count(result.retried)}") + f" ({result.skipped} skipped)"
                )
            return
        if options["id"] is None:
            raise CommandError("give a dead letter id, or --all")
        if any(value is not None for value in filters.values()):
            raise CommandError("--error-type, --provider and --model filter --all; they do not apply to one id")
        entry, job = services.dlq_retry(entry_id=options["id"])
        if options["json"]:
            self._json({"dlq_id": entry.id, "job_id": str(job.id), "status": job.status})
        else:
            self.stdout.write(self.style.SUCCESS(f"dead letter {entry.id} retried: job {job.id} is {job.status}"))

    def _discard(self, options: dict) -> None:
        entry = services.dlq_discard(entry_id=options["id"])
        if options["json"]:
            self._json(DeadLetterOutputSerializer(entry).data)
        else:
            self.stdout.write(self.style.SUCCESS(f"dead letter {entry.id} discarded (job {entry.job_uuid} stays dead)"))

    def _prune(self, options: dict) -> None:
        result = records.dlq_prune()
        if options["json"]:
            self._json(result.as_dict())
            return
        age = settings.AI_DLQ_MAX_AGE_DAYS
        self.stdout.write(
            f"pruned {_count(result.deleted)}: {result.expired} older than "
            + (f"{age} days" if age else "the age limit (none set)")
            + f", {result.over_cap} beyond the newest {settings.AI_DLQ_MAX_ENTRIES}"
        )

    # --- output ---

    def _table(self, header: list[str], rows: list[list[str]], *, status_column: int) -> None:
        widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
        widths[-1] = 0  # the last column is not padded
        self.stdout.write(self.style.MIGRATE_HEADING(_join(header, widths)))
        styles = {"open": self.style.WARNING, "retried": self.style.SUCCESS, "discarded": lambda text: text}
        for row in rows:
            line = _join(row, widths)
            status = row[status_column]
            start = sum(widths[:status_column]) + 2 * status_column
            end = start + widths[status_column]
            self.stdout.write(line[:start] + styles[status](line[start:end]) + line[end:])


def _join(cells: list[str], widths: list[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_WIDTH else text[: MESSAGE_WIDTH - 1] + "…"


def _count(n: int) -> str:
    return f"{n} dead letter{'' if n == 1 else 's'}"
