"""Deliveries end to end: a job with a webhook runs on a real RQ worker, its event goes out from the webhook
queue to a loopback receiver that verifies the Standard Webhooks signature; retries, timeouts, an outage, a
refused address, the sweeper after a Redis flush."""

from __future__ import annotations

import time

import pytest
from django.utils import timezone

from jobs.models import JobStatus
from tests.factories import submit_job
from webhooks.delivery import webhook_deliver, webhook_delivery_resend, webhooks_sweep
from webhooks.models import DeliveryStatus, WebhookDelivery
from webhooks.records import delivery_rq_id, webhook_event_add, webhook_secret_rotate
from webhooks.selectors import webhook_pending_count

pytestmark = pytest.mark.django_db(transaction=True)

EVENTS = ["job.succeeded", "job.dead"]


def _job(user, receiver, **kwargs):
    return submit_job(user, webhook={"url": receiver.url, "events": EVENTS}, **kwargs)


def _event(user, receiver, event_type="job.succeeded") -> WebhookDelivery:
    """An event written as the batches code or the pipeline would, without running a job."""
    spec = {"url": receiver.url, "events": EVENTS}
    return webhook_event_add(owner=user, spec=spec, event_type=event_type, data={"id": "x"}, subject_id="x")


def _settled() -> bool:
    return not WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING).exists()


def test_a_succeeded_job_is_delivered_signed_with_the_job_as_the_api_shows_it(user, api, receiver, run_webhook_worker):
    job = _job(user, receiver)

    run_webhook_worker(until=lambda: receiver.count() >= 1 and _settled())

    [event] = receiver.events().values()
    assert event.verified, "the standardwebhooks verifier accepted the signature"
    assert event.body["type"] == "job.succeeded"
    assert set(event.body) == {"type", "timestamp", "data"}
    shown = api.get(f"/api/ai/jobs/{job.id}").json()
    assert event.body["data"] == shown, "data is the job as GET /api/ai/jobs/{id} shows it"
    delivery = WebhookDelivery.objects.get()
    assert event.webhook_id == delivery.webhook_id and event.webhook_id.startswith("msg_")
    assert event.headers["webhook-timestamp"].isdigit()
    assert delivery.status == DeliveryStatus.DELIVERED and delivery.attempts == 1
    assert delivery.last_status_code == 200 and delivery.last_latency_ms is not None
    assert delivery.subject_id == str(job.id) and delivery.event_type == "job.succeeded"


def test_a_dead_job_sends_job_dead_only_when_asked(user, receiver, run_webhook_worker):
    wants_dead = submit_job(
        user, simulate={"fail_attempts": 5, "error": "auth"}, webhook={"url": receiver.url, "events": ["job.dead"]}
    )
    only_success = submit_job(
        user, simulate={"fail_attempts": 5, "error": "auth"}, webhook={"url": receiver.url, "events": ["job.succeeded"]}
    )

    run_webhook_worker(until=lambda: receiver.count() >= 1 and _settled())

    [event] = receiver.events().values()
    assert event.body["type"] == "job.dead"
    assert event.body["data"]["id"] == str(wants_dead.id) and event.body["data"]["status"] == JobStatus.DEAD
    assert event.body["data"]["error_type"] == "AUTH_ERROR"
    assert not WebhookDelivery.objects.filter(subject_id=str(only_success.id)).exists()


def test_a_job_without_a_webhook_writes_no_event(user, run_worker):
    submit_job(user)
    run_worker()
    assert not WebhookDelivery.objects.exists()


def test_500_then_200_is_retried_and_delivered_once_with_one_webhook_id(user, receiver, run_webhook_worker):
    receiver.enqueue("500")
    _job(user, receiver)

    run_webhook_worker(until=_settled)

    assert [item.answer for item in receiver.received] == ["500", "ok"]
    first, second = receiver.received
    assert first.webhook_id == second.webhook_id, "a retry keeps the event's webhook-id (receivers de-duplicate)"
    assert second.at - first.at < 10, "the first retry comes within 10 s"
    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.DELIVERED and delivery.attempts == 2
    assert len(receiver.events()) == 1


def test_a_receiver_that_times_out_is_retried(user, receiver, run_webhook_worker):
    receiver.timeout_delay = 5.0  # longer than the 1 s timeout
    receiver.enqueue("timeout")
    _job(user, receiver)

    run_webhook_worker(until=_settled)

    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.DELIVERED and delivery.attempts == 2
    assert [item.answer for item in receiver.received][:2] == ["timeout", "ok"]


def test_a_receiver_down_for_a_while_gets_every_event_after_it_is_back(user, receiver, run_webhook_worker, settings):
    settings.AI_WEBHOOK_RETRY_SCHEDULE = (1.0, 2.0, 2.0, 2.0, 2.0)
    receiver.stop()
    jobs = [_job(user, receiver) for _ in range(3)]

    # every first try fails while it is down (connection refused), none is lost
    run_webhook_worker(until=lambda: WebhookDelivery.objects.filter(attempts__gte=1).count() == 3)
    assert WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING).count() == 3
    assert set(WebhookDelivery.objects.values_list("last_status_code", flat=True)) == {None}
    assert all("Connect" in error for error in WebhookDelivery.objects.values_list("last_error", flat=True))

    receiver.start()
    run_webhook_worker(until=_settled)

    events = receiver.events()
    assert len(events) == 3
    assert {event.body["data"]["id"] for event in events.values()} == {str(job.id) for job in jobs}
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {DeliveryStatus.DELIVERED}


def test_a_delivery_that_exhausts_its_tries_is_failed_and_can_be_resent(user, receiver, run_webhook_worker):
    receiver.enqueue("500", "503", "502", "500")  # 4 tries: the first and the schedule's 3 retries
    _job(user, receiver)

    run_webhook_worker(until=_settled)

    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 4
    assert delivery.last_status_code == 500 and "received" in delivery.last_error
    assert receiver.events() == {}

    webhook_delivery_resend(delivery_id=delivery.id, owner=user)
    run_webhook_worker(until=_settled)

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.DELIVERED and delivery.attempts == 5
    [event] = receiver.events().values()
    assert event.webhook_id == delivery.webhook_id


def test_a_redirect_is_not_followed(user, receiver, run_webhook_worker, settings):
    settings.AI_WEBHOOK_RETRY_SCHEDULE = ()
    receiver.enqueue("302")
    _job(user, receiver)

    run_webhook_worker(until=_settled)

    delivery = WebhookDelivery.objects.get()
    assert delivery.status == DeliveryStatus.FAILED and delivery.last_status_code == 302
    assert receiver.count() == 1, "the Location was not visited"


def test_a_name_that_resolves_to_loopback_is_refused_at_delivery(user, receiver, run_webhook_worker):
    # accepted at submit (a name is not resolved then), refused when resolved at delivery: DNS rebinding
    job = submit_job(user, webhook={"url": f"https://localhost:{receiver.port}/hook", "events": EVENTS})

    run_webhook_worker(until=_settled)

    delivery = WebhookDelivery.objects.get(subject_id=str(job.id))
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 1, "refused: no retries"
    assert "non-public" in delivery.last_error and delivery.last_status_code is None
    assert receiver.count() == 0


def test_a_slow_dripping_answer_does_not_hold_the_worker_past_the_timeout(user, receiver, redis_conn):
    receiver.enqueue("slow_body")
    delivery = _event(user, receiver)
    started = time.monotonic()

    outcome = webhook_deliver(delivery.id, 1)  # the RQ entry point, in this process

    assert time.monotonic() - started < 5
    assert outcome == "delivered"  # a 200 arrived; the body is read only up to the cap or the deadline


def test_a_duplicate_or_stale_try_claims_nothing(user, receiver, redis_conn):
    delivery = _event(user, receiver)
    assert webhook_deliver(delivery.id, 1) == "delivered"
    assert webhook_deliver(delivery.id, 1) == "skipped: nothing to claim"
    assert webhook_deliver(delivery.id, 2) == "skipped: nothing to claim"
    assert receiver.count() == 1


def test_rotation_signs_with_both_secrets_during_the_grace(user, receiver, redis_conn, settings):
    old = receiver.secrets[0]
    new = webhook_secret_rotate(owner=user).secret
    assert new != old and new.startswith("whsec_")
    delivery = _event(user, receiver)

    receiver.secrets = [old]  # a receiver not switched over yet still verifies
    assert webhook_deliver(delivery.id, 1) == "delivered"
    assert receiver.received[-1].verified
    assert len(receiver.received[-1].headers["webhook-signature"].split(" ")) == 2

    settings.AI_WEBHOOK_SECRET_GRACE_SECONDS = 0
    webhook_secret_rotate(owner=user)  # grace over at once: only the newest secret signs
    webhook_delivery_resend(delivery_id=delivery.id, owner=user)
    receiver.secrets = [new]
    assert webhook_deliver(delivery.id, 2) == "delivered"
    assert not receiver.received[-1].verified, "the secret rotated away no longer signs"
    assert len(receiver.received[-1].headers["webhook-signature"].split(" ")) == 1


def test_the_sweeper_resends_what_a_redis_flush_lost(user, receiver, redis_conn, run_worker, run_webhook_worker):
    job = _job(user, receiver)
    run_worker()  # the AI queues only: the job succeeds, its event's try waits on the webhook queue
    assert WebhookDelivery.objects.filter(subject_id=str(job.id)).exists()
    redis_conn.flushdb()  # the try's RQ job is gone; the row is not
    WebhookDelivery.objects.update(next_attempt_at=timezone.now() - timezone.timedelta(seconds=60))
    assert WebhookDelivery.objects.get().status == DeliveryStatus.PENDING

    swept = webhooks_sweep()

    assert swept == [WebhookDelivery.objects.get().id]
    assert webhooks_sweep() == [], "a try Redis holds is not enqueued twice"
    run_webhook_worker(until=_settled)
    assert len(receiver.events()) == 1 and receiver.count() == 1


def test_the_sweeper_leaves_a_waiting_try_alone(user, receiver, redis_conn):
    delivery = _event(user, receiver)
    WebhookDelivery.objects.update(next_attempt_at=timezone.now() - timezone.timedelta(seconds=60))
    assert redis_conn.exists(f"rq:job:{delivery_rq_id(delivery.id, 1)}")
    assert webhooks_sweep() == []
    assert webhook_pending_count() == 1
