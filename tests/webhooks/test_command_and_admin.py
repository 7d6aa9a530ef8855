"""manage.py webhooks (tables, --json, one-line errors that change nothing) and the admin's list and re-send
action; the delivery metrics."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from prometheus_client import REGISTRY

from audit.models import AuditEntry
from webhooks.delivery import webhook_deliver
from webhooks.models import DeliveryStatus, WebhookDelivery
from webhooks.records import webhook_event_add

pytestmark = pytest.mark.django_db(transaction=True)

SPEC = {"url": "http://127.0.0.1:9/hook", "events": ["job.succeeded", "job.dead"]}
CHANGELIST = "/admin/webhooks/webhookdelivery/"


def _event(owner, status=DeliveryStatus.FAILED) -> WebhookDelivery:
    delivery = webhook_event_add(owner=owner, spec=SPEC, event_type="job.dead", data={"id": "j"}, subject_id="j1")
    WebhookDelivery.objects.filter(id=delivery.id).update(status=status, attempts=8, last_error="HTTP 500 boom")
    return delivery


def webhooks(*args: str) -> str:
    out = StringIO()
    call_command("webhooks", *args, stdout=out)
    return out.getvalue()


def snapshot() -> list:
    return [
        list(WebhookDelivery.objects.order_by("id").values_list("id", "status", "attempts", "attempts_base")),
        AuditEntry.objects.count(),
    ]


def refused(*args: str) -> str:
    before = snapshot()
    with pytest.raises(CommandError) as exc:
        webhooks(*args)
    assert snapshot() == before
    message = str(exc.value)
    assert message and "\n" not in message
    return message


def test_list_as_a_table_and_as_json(user, redis_conn):
    failed = _event(user)
    _event(user, status=DeliveryStatus.DELIVERED)
    table = webhooks("list", "--status", "failed")
    assert "FAILED".lower() in table and "HTTP 500 boom" in table and str(failed.id) in table
    rows = json.loads(webhooks("list", "--json"))
    assert len(rows) == 2 and {"webhook_id", "status", "attempts", "last_status_code"} <= set(rows[0])
    assert webhooks("list", "--event-type", "job.succeeded") == "no deliveries match\n"


def test_resend_from_the_command_is_audited_with_the_os_user(user, redis_conn):
    delivery = _event(user)
    out = json.loads(webhooks("resend", str(delivery.id), "--json"))
    assert out["status"] == "pending"
    assert AuditEntry.objects.get().action == "webhook.resend"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("list", "--status", "lost"), "--status"),
        (("list", "--event-type", "job.started"), "--event-type"),
        (("list", "--limit", "0"), "--limit"),
        (("list", "--limit", "x"), "--limit"),
        (("resend", "abc"), "id"),
        (("resend", "0"), "id"),
        (("resend", "999999"), "not found"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(user, redis_conn, args, says):
    _event(user)
    assert says in refused(*args)


def test_resend_of_a_pending_delivery_is_refused(user, redis_conn):
    delivery = _event(user, status=DeliveryStatus.PENDING)
    assert "pending" in refused("resend", str(delivery.id))


def test_sweep_reports_what_it_would_requeue(user, redis_conn):
    delivery = _event(user, status=DeliveryStatus.PENDING)
    redis_conn.flushdb()
    WebhookDelivery.objects.update(next_attempt_at="2000-01-01T00:00:00Z")
    assert json.loads(webhooks("sweep", "--dry-run", "--json")) == {"requeued": [delivery.id], "dry_run": True}
    assert json.loads(webhooks("sweep", "--json")) == {"requeued": [delivery.id], "dry_run": False}
    assert json.loads(webhooks("sweep", "--json"))["requeued"] == []


def test_admin_lists_filters_and_resends(user, staff_client, user_client, redis_conn):
    failed = _event(user)
    response = staff_client.get(CHANGELIST, {"status__exact": "failed"})
    assert response.status_code == 200 and "job.dead" in response.content.decode()
    assert staff_client.get(f"{CHANGELIST}{failed.id}/change/").status_code == 200
    assert user_client.get(CHANGELIST).status_code == 302, "not staff: sent to the login page"

    response = staff_client.post(
        CHANGELIST, {"action": "resend_selected", "_selected_action": [failed.id]}, follow=True
    )
    assert response.status_code == 200
    failed.refresh_from_db()
    assert failed.status == DeliveryStatus.PENDING
    entry = AuditEntry.objects.get()
    assert entry.source == "admin" and entry.target_id == str(failed.id)


def _metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_try_is_counted_by_outcome_with_its_latency(user, redis_conn, settings):
    settings.AI_WEBHOOK_RETRY_SCHEDULE = (1.0,)
    before = {o: _metric("ai_webhook_deliveries_total", outcome=o) for o in ("retrying", "failed", "refused")}
    count = _metric("ai_webhook_delivery_duration_seconds_count")
    closed = webhook_event_add(owner=user, spec=SPEC, event_type="job.dead", data={}, subject_id="x")  # port 9
    webhook_deliver(closed.id, 1)
    webhook_deliver(closed.id, 2)
    local = {"url": "https://localhost/hook", "events": ["job.dead"]}
    rebinding = webhook_event_add(owner=user, spec=local, event_type="job.dead", data={}, subject_id="y")
    webhook_deliver(rebinding.id, 1)

    assert _metric("ai_webhook_deliveries_total", outcome="retrying") - before["retrying"] == 1
    assert _metric("ai_webhook_deliveries_total", outcome="failed") - before["failed"] == 1
    assert _metric("ai_webhook_deliveries_total", outcome="refused") - before["refused"] == 1
    assert _metric("ai_webhook_delivery_duration_seconds_count") - count == 2, "a refusal sent nothing to time"
