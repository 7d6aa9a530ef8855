"""The webhook endpoints and a job's webhook at submit: the happy paths, and every bad input a 4xx in the error
shape that changes nothing."""

from __future__ import annotations

import pytest
from rq import Queue

from aipb.queue_names import WEBHOOK_QUEUE
from audit.models import AuditEntry
from jobs.models import AIJob
from tests.factories import UserFactory
from webhooks.models import DeliveryStatus, WebhookDelivery, WebhookSecret
from webhooks.records import webhook_event_add

pytestmark = pytest.mark.django_db(transaction=True)

SPEC = {"url": "http://127.0.0.1:9/hook", "events": ["job.succeeded", "job.dead"]}


def assert_error(response, status: int, error_type: str | None = None) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "details"}
    if error_type:
        assert body["error"]["type"] == error_type
    return body["error"]


def snapshot(redis_conn) -> list:
    queue = Queue(WEBHOOK_QUEUE, connection=redis_conn)
    return [
        list(AIJob.objects.order_by("id").values_list("id", "status")),
        list(WebhookDelivery.objects.order_by("id").values_list("id", "status", "attempts", "attempts_base")),
        list(WebhookSecret.objects.order_by("id").values_list("owner_id", "secret", "previous_secret")),
        queue.count + queue.scheduled_job_registry.count,
        AuditEntry.objects.count(),
    ]


def _event(owner, status: str = DeliveryStatus.FAILED, event_type: str = "job.dead") -> WebhookDelivery:
    delivery = webhook_event_add(owner=owner, spec=SPEC, event_type=event_type, data={"id": "j"}, subject_id="j")
    WebhookDelivery.objects.filter(id=delivery.id).update(status=status, attempts=4)
    delivery.refresh_from_db()
    return delivery


# --- a job's webhook at submit ---


def test_a_job_submitted_with_a_webhook_keeps_it_and_gets_its_owner_a_secret(api, user, redis_conn):
    assert not WebhookSecret.objects.exists()
    response = api.post("/api/ai/jobs", {"prompt": "a page", "webhook": SPEC}, format="json")
    assert response.status_code == 201, response.content
    assert AIJob.objects.get().webhook == {"url": SPEC["url"], "events": ["job.dead", "job.succeeded"]}
    assert WebhookSecret.objects.get().owner == user

    # the secret made for it is the one rotation replaces (and keeps signing with during the grace)
    first = WebhookSecret.objects.get().secret
    rotated = api.post("/api/ai/webhooks/secret").json()
    assert rotated["secret"] != first and rotated["previous_secret_expires_at"] is not None


@pytest.mark.parametrize(
    ("webhook", "says"),
    [
        ({"url": SPEC["url"], "events": ["job.started"]}, "unknown event"),
        ({"url": SPEC["url"], "events": ["batch.completed"]}, "unknown event"),
        ({"url": "http://hooks.example.com/x"}, "https"),
        ({"url": "https://192.168.0.10/x"}, "public"),
        ({"url": "https://169.254.169.254/latest"}, "public"),
        ({"url": "https://[::1]/x"}, "public"),
        ({"url": "https://127.0.0.2/x"}, "public"),
        ({"url": "ftp://h.example.com/x"}, "https"),
        ({"url": ""}, "non-empty"),
        ({"url": SPEC["url"], "extra": 1}, "unknown fields"),
        ("http://127.0.0.1/hook", "object"),
        ([SPEC], "object"),
        (None, "null"),
    ],
)
def test_a_bad_webhook_at_submit_is_a_400_and_writes_nothing(api, redis_conn, webhook, says):
    before = snapshot(redis_conn)
    error = assert_error(api.post("/api/ai/jobs", {"prompt": "a page", "webhook": webhook}, format="json"), 400)
    assert says in error["message"]
    assert snapshot(redis_conn) == before


# --- POST /api/ai/webhooks/secret ---


def test_secret_is_created_then_rotated(api, user):
    first = api.post("/api/ai/webhooks/secret")
    assert first.status_code == 201 and first.json()["secret"].startswith("whsec_")
    assert first.json()["previous_secret_expires_at"] is None
    second = api.post("/api/ai/webhooks/secret").json()
    assert second["secret"] != first.json()["secret"]
    row = WebhookSecret.objects.get(owner=user)
    assert row.secret == second["secret"] and row.previous_secret == first.json()["secret"]


def test_secret_bad_requests(anon_api, api, redis_conn):
    before = snapshot(redis_conn)
    assert_error(anon_api.post("/api/ai/webhooks/secret"), 401, "not_authenticated")
    assert_error(api.get("/api/ai/webhooks/secret"), 405, "method_not_allowed")
    assert_error(api.delete("/api/ai/webhooks/secret"), 405, "method_not_allowed")
    assert_error(api.post("/api/ai/webhooks/secret", "{not json", content_type="application/json"), 400)
    assert_error(api.post("/api/ai/webhooks/secret", {"secret": "mine"}, format="json"), 400, "validation_error")
    assert_error(api.post("/api/ai/webhooks/secret", [], format="json"), 400)
    assert_error(api.post("/api/ai/webhooks/secret", "x=1", content_type="text/plain"), 415)
    assert snapshot(redis_conn) == before


# --- GET /api/ai/webhooks/deliveries ---


def test_owners_see_their_own_deliveries_and_staff_all(api, staff_api, user, other_user, redis_conn):
    mine = _event(user)
    _event(other_user, status=DeliveryStatus.DELIVERED, event_type="job.succeeded")

    body = api.get("/api/ai/webhooks/deliveries").json()
    assert body["count"] == 1 and body["results"][0]["id"] == mine.id
    row = body["results"][0]
    assert row["webhook_id"] == mine.webhook_id and row["url"] == SPEC["url"] and row["attempts"] == 4
    assert {"event_type", "status", "last_status_code", "last_latency_ms", "owner"} <= set(row)

    assert staff_api.get("/api/ai/webhooks/deliveries").json()["count"] == 2
    assert staff_api.get("/api/ai/webhooks/deliveries?status=delivered").json()["count"] == 1
    assert staff_api.get("/api/ai/webhooks/deliveries?event_type=job.dead").json()["count"] == 1
    assert staff_api.get("/api/ai/webhooks/deliveries?subject_id=nope").json()["count"] == 0


@pytest.mark.parametrize(
    "query",
    ["status=lost", "event_type=job.started", "limit=0", "limit=501", "offset=-1", "limit=x", "colour=red"],
)
def test_deliveries_bad_query_is_a_400(api, query):
    assert_error(api.get(f"/api/ai/webhooks/deliveries?{query}"), 400, "validation_error")


def test_deliveries_need_credentials(anon_api):
    assert_error(anon_api.get("/api/ai/webhooks/deliveries"), 401, "not_authenticated")


# --- POST /api/ai/webhooks/deliveries/{id}/resend ---


def test_resend_of_a_failed_delivery_makes_it_pending_with_a_fresh_budget(api, user, redis_conn):
    delivery = _event(user)
    response = api.post(f"/api/ai/webhooks/deliveries/{delivery.id}/resend")
    assert response.status_code == 202, response.content
    assert response.json()["status"] == "pending"
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING and delivery.attempts_base == 4 and delivery.attempts_left > 0
    assert redis_conn.exists(f"rq:job:webhook-{delivery.id}-5")
    assert AuditEntry.objects.count() == 0, "an owner re-sending their own is not audited"


def test_staff_resend_of_someone_elses_is_audited(staff_api, user, redis_conn):
    delivery = _event(user)
    assert staff_api.post(f"/api/ai/webhooks/deliveries/{delivery.id}/resend").status_code == 202
    entry = AuditEntry.objects.get()
    assert entry.action == "webhook.resend" and entry.target_id == str(delivery.id) and entry.actor == "ops"


def test_resend_bad_requests_change_nothing(api, anon_api, user, redis_conn):
    pending = _event(user, status=DeliveryStatus.PENDING)
    someone_elses = _event(UserFactory(username="carol"))
    before = snapshot(redis_conn)
    assert_error(anon_api.post(f"/api/ai/webhooks/deliveries/{pending.id}/resend"), 401)
    assert_error(api.post(f"/api/ai/webhooks/deliveries/{pending.id}/resend"), 409, "conflict")
    assert_error(api.post(f"/api/ai/webhooks/deliveries/{someone_elses.id}/resend"), 404, "not_found")
    assert_error(api.post("/api/ai/webhooks/deliveries/999999/resend"), 404, "not_found")
    assert_error(api.post("/api/ai/webhooks/deliveries/99999999999999999999999/resend"), 404, "not_found")
    assert_error(api.post("/api/ai/webhooks/deliveries/abc/resend"), 404)
    assert_error(api.get(f"/api/ai/webhooks/deliveries/{pending.id}/resend"), 405)
    assert snapshot(redis_conn) == before
