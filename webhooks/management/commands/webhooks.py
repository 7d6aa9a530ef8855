"""manage.py webhooks list|resend|sweep — webhook deliveries for operators and scripts.

resend of a delivery is written to the audit trail with the OS user who ran it. sweep re-enqueues the pending
deliveries Redis lost (reconcile runs it too).
"""

from __future__ import annotations

from aipb.commands import OPERATOR, OperatorCommand, choice, clip, parse_int
from audit.records import Actor
from webhooks.delivery import webhook_delivery_resend, webhooks_sweep
from webhooks.models import DeliveryStatus, EventType
from webhooks.selectors import webhook_delivery_list
from webhooks.serializers import WebhookDeliveryOutputSerializer

URL_WIDTH = 40
ERROR_WIDTH = 40


class Command(OperatorCommand):
    help = "List webhook deliveries, re-send one, or re-enqueue the ones Redis lost."

    def add_subcommands(self, sub):
        p = sub.add_parser("list", help="deliveries, newest first")
        p.add_argument("--status", help="pending, delivered or failed")
        p.add_argument("--event-type", help="job.succeeded, job.dead or batch.completed")
        p.add_argument("--limit", default="50", help="how many (1-500, default 50)")
        p.add_argument("--json", action="store_true", help="print a JSON array of the API's delivery objects")

        p = sub.add_parser("resend", help="send a failed (or delivered) delivery again, with a fresh budget")
        p.add_argument("id", help="the delivery id")
        p.add_argument("--json", action="store_true")

        p = sub.add_parser("sweep", help="re-enqueue overdue pending deliveries that Redis holds no try for")
        p.add_argument("--dry-run", action="store_true", help="say which, change nothing")
        p.add_argument("--json", action="store_true")

    def _list(self, **options) -> None:
        status = choice(options["status"], option="--status", choices=DeliveryStatus.values)
        event_type = choice(options["event_type"], option="--event-type", choices=EventType.values)
        limit = parse_int(options["limit"], option="--limit", minimum=1, maximum=500)
        qs = webhook_delivery_list(user=OPERATOR, filters={"status": status or None, "event_type": event_type or None})
        rows = WebhookDeliveryOutputSerializer(list(qs[:limit]), many=True).data
        if options["json"]:
            self.print_json(rows)
            return
        if not rows:
            self.stdout.write("no deliveries match")
            return
        table = [
            [
                str(row["id"]),
                row["status"],
                row["event_type"],
                str(row["attempts"]),
                str(row["last_status_code"] or "-"),
                row["subject_id"],
                clip(row["url"], URL_WIDTH),
                row["created_at"],
                clip(row["last_error"], ERROR_WIDTH),
            ]
            for row in rows
        ]
        header = ["ID", "STATUS", "EVENT", "TRIES", "CODE", "SUBJECT", "URL", "CREATED", "LAST ERROR"]
        self.print_table(header, table)

    def _resend(self, **options) -> None:
        delivery_id = parse_int(options["id"], option="id", minimum=1, maximum=2**63 - 1)
        delivery = webhook_delivery_resend(delivery_id=delivery_id, actor=Actor.of_command())
        if options["json"]:
            self.print_json(WebhookDeliveryOutputSerializer(delivery).data)
            return
        self.stdout.write(f"delivery {delivery.id} will be sent again ({delivery.event_type} to {delivery.url})")

    def _sweep(self, **options) -> None:
        ids = webhooks_sweep(dry_run=options["dry_run"])
        if options["json"]:
            self.print_json({"requeued": ids, "dry_run": options["dry_run"]})
            return
        verb = "would re-enqueue" if options["dry_run"] else "re-enqueued"
        self.stdout.write(f"webhooks: {verb} {len(ids)} deliveries" + (": " + ", ".join(map(str, ids)) if ids else ""))
