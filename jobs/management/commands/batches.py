"""manage.py batches list|view|cancel — the operator's view of batches of jobs.

    batches list [--status S] [--owner NAME] [--limit N] [--offset N] [--json]
    batches view ID [--json]
    batches cancel ID [--reason TEXT]

ID is a batch's UUID or its first few hex digits (at least 4) when they name one batch.
--json prints the objects the API returns (a JSON array for list, the object for view).
cancel cancels every job of the batch that has not started; it is written to the audit trail with the OS user.
"""

from __future__ import annotations

from aipb.api import ListParams
from aipb.commands import MIN_ID_PREFIX, OPERATOR, OperatorCommand, age, choice, parse_int, resolve_id, user_named
from audit.records import Actor
from jobs import batch_selectors, batches
from jobs.batch_serializers import batch_output
from jobs.models import UNFINISHED_STATUSES, Batch, BatchStatus, JobStatus

LIST_MAX = 500
OFFSET_MAX = ListParams().fields["offset"].max_value
ID_HELP = f"the batch's UUID, or its first {MIN_ID_PREFIX} or more hex digits"


class Command(OperatorCommand):
    help = "List, inspect and cancel batches of AI jobs."

    def add_subcommands(self, sub):
        p = sub.add_parser("list", help="newest batches first, with their jobs' counts")
        p.add_argument("--status", help=f"one of {', '.join(BatchStatus.values)}")
        p.add_argument("--owner", metavar="USERNAME", help="only this user's batches")
        p.add_argument("--limit", default="50", help=f"how many (1 to {LIST_MAX}, default 50)")
        p.add_argument("--offset", default="0", help="skip this many first (the next page)")
        p.add_argument("--json", action="store_true", help="print a JSON array, as the API returns")

        p = sub.add_parser("view", help="one batch: its jobs by status, cost, times")
        p.add_argument("batch_id", metavar="ID", help=ID_HELP)
        p.add_argument("--json", action="store_true", help="print the batch object, as the API returns")

        p = sub.add_parser("cancel", help="cancel every job of a running batch that has not started")
        p.add_argument("batch_id", metavar="ID", help=ID_HELP)
        p.add_argument("--reason", default="", help="why: kept in the audit trail (at most 500 characters)")

    def _list(self, *, status, owner, limit, offset, json, **_):
        choice(status, option="--status", choices=BatchStatus.values)
        limit = parse_int(limit, option="--limit", minimum=1, maximum=LIST_MAX)
        offset = parse_int(offset, option="--offset", minimum=0, maximum=OFFSET_MAX)
        qs = batch_selectors.batch_list(user=OPERATOR)
        if status:
            qs = qs.filter(status=status)
        if owner is not None:
            qs = qs.filter(owner=user_named(owner))
        views = batch_selectors.batch_views(list(qs[offset : offset + limit]))
        if json:
            self.print_json([batch_output(view) for view in views])
            return
        if not views:
            self.stdout.write("no batches match")
            return
        rows = [
            (
                view.batch.id,
                view.batch.status,
                view.batch.total,
                view.counts[JobStatus.SUCCEEDED],
                view.counts[JobStatus.DEAD],
                view.counts[JobStatus.CANCELED],
                sum(view.counts[s] for s in UNFINISHED_STATUSES),
                view.cost_usd,
                age(view.batch.created_at),
                view.batch.owner.get_username(),
            )
            for view in views
        ]
        self.print_table(
            ("ID", "STATUS", "TOTAL", "SUCCEEDED", "DEAD", "CANCELED", "UNFINISHED", "COST USD", "AGE", "OWNER"),
            rows,
            right={2, 3, 4, 5, 6, 7},
        )

    def _view(self, *, batch_id, json, **_):
        view = batch_selectors.batch_view(user=OPERATOR, batch_id=self._batch_id(batch_id))
        if json:
            self.print_json(batch_output(view))
            return
        batch = view.batch
        label = self.style.MIGRATE_LABEL
        self.stdout.write(self.style.MIGRATE_HEADING(f"batch {batch.id}"))
        fields = [
            ("status", batch.status),
            ("owner", batch.owner.get_username()),
            ("total", str(batch.total)),
            ("jobs", ", ".join(f"{n} {status}" for status, n in view.counts.items() if n) or "none"),
            ("cost", f"${view.cost_usd}"),
            ("created", batch.created_at.isoformat(timespec="seconds")),
            ("finished", batch.finished_at.isoformat(timespec="seconds") if batch.finished_at else ""),
            ("metadata", str(batch.metadata) if batch.metadata else ""),
        ]
        for name, value in fields:
            if value:
                self.stdout.write(f"  {label(name.ljust(10))}{value}")

    def _cancel(self, *, batch_id, reason, **_):
        batch, canceled = batches.batch_cancel(
            batch_id=self._batch_id(batch_id), actor=Actor.of_command(), reason=reason
        )
        self.stdout.write(self.style.SUCCESS(f"batch {batch.id} canceled") + f" ({canceled} jobs had not started)")

    def _batch_id(self, value: str):
        return resolve_id(value, queryset=Batch.objects.all(), what="batch")
