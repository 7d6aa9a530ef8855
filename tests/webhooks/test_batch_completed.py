"""batch.completed: one event per batch, written with the UPDATE that finishes it (jobs.accounting.batches_settle),
sent by a real RQ worker to a loopback receiver that verifies it with the `standardwebhooks` verifier; a batch's
webhook also reaches the jobs that carry none of their own; a bad one is a 400 that writes nothing."""

from __future__ import annotations

import time

import pytest
from django.db import transaction
from django.utils import timezone
from prometheus_client import REGISTRY
from rq import Queue

from aipb.queue_names import WEBHOOK_QUEUE
from jobs import accounting, pipeline, transitions
from jobs.batches import batch_submit
from jobs.models import AIJob, Batch, JobStatus
from jobs.queues import all_queues, delivery_delete
from jobs.routing import chains
from jobs.worker import AIPBSimpleWorker
from tests.api.test_jobs_api import assert_error
from webhooks.models import DeliveryStatus, EventType, WebhookDelivery, WebhookSecret

pytestmark = pytest.mark.django_db(transaction=True)

BATCHES = "/api/ai/batches"
SIM = {"provider": "simulated", "model": "sim-small"}
FINAL = {JobStatus.SUCCEEDED, JobStatus.DEAD, JobStatus.CANCELED}


def completed_events() -> list[WebhookDelivery]:
    return list(WebhookDelivery.objects.filter(event_type=EventType.BATCH_COMPLETED))


def settled() -> bool:
    return not WebhookDelivery.objects.filter(status=DeliveryStatus.PENDING).exists()


def tries_in_redis(redis_conn) -> int:
    queue = Queue(WEBHOOK_QUEUE, connection=redis_conn)
    return queue.count + queue.scheduled_job_registry.count


def finished_count(status: str) -> float:
    return REGISTRY.get_sample_value("ai_batches_total", {"status": status}) or 0.0


def post_batch(api, jobs: list[dict], webhook: dict, **extra) -> dict:
    response = api.post(BATCHES, {"jobs": jobs, "webhook": webhook, **extra}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def assert_delivered_after_every_job(batch_id: str, receiver) -> dict:
    """The one batch.completed of the batch: signed, sent after every job was final, its data the batch as the API
    shows it now, its counts the jobs' final counts. Returns its body."""
    [delivery] = completed_events()
    [event] = [event for event in receiver.events().values() if event.body["type"] == "batch.completed"]
    assert event.verified, "the standardwebhooks verifier accepted the signature"
    assert event.webhook_id == delivery.webhook_id and event.body["type"] == "batch.completed"
    statuses = list(AIJob.objects.filter(batch_id=batch_id).values_list("status", "finished_at"))
    assert {status for status, _ in statuses} <= FINAL
    last_end = max(finished_at for _, finished_at in statuses if finished_at is not None)
    assert delivery.created_at >= last_end and event.at >= last_end.timestamp(), "written after the last job ended"
    data = event.body["data"]
    assert data["id"] == batch_id and data["finished_at"] is not None
    final = {status: sum(1 for s, _ in statuses if s == status) for status in JobStatus.values}
    assert data["counts"] == final, "its counts are the jobs' final counts"
    assert sum(data["counts"].values()) == data["total"] == len(statuses)
    return event.body


def test_a_batch_of_20_sends_one_signed_batch_completed_after_every_job_is_final(
    api, receiver, run_webhook_worker, redis_conn
):
    jobs = [{"prompt": f"ok {i}", **SIM} for i in range(18)]
    jobs += [
        {"prompt": f"dies {i}", **SIM, "options": {"simulate": {"fail_attempts": 5, "error": "auth"}}} for i in range(2)
    ]
    batch = post_batch(api, jobs, {"url": receiver.url, "events": ["batch.completed"]})

    run_webhook_worker(until=lambda: receiver.count() >= 1 and settled())
    time.sleep(0.3)  # a second event, if one were sent, would have arrived by now

    body = assert_delivered_after_every_job(batch["id"], receiver)
    assert body["data"] == api.get(f"{BATCHES}/{batch['id']}").json(), "data is the batch as GET shows it"
    assert body["data"]["status"] == "completed"
    assert body["data"]["counts"] == {
        "queued": 0,
        "running": 0,
        "retrying": 0,
        "succeeded": 18,
        "dead": 2,
        "canceled": 0,
    }
    assert WebhookDelivery.objects.count() == 1, "the webhook named batch.completed alone: no job events"
    assert receiver.count() == 1
    # settling again (reconcile's sweep, a late worker) finds the batch finished: no second event
    assert accounting.batches_settle([batch["id"]]) == []
    assert accounting.batches_settle(None, created_before=timezone.now()) == []
    assert len(completed_events()) == 1


def test_the_batch_webhook_reaches_the_jobs_that_have_none_of_their_own(api, receiver, run_webhook_worker):
    own = {"url": receiver.url.replace("/hook", "/own"), "events": ["job.dead"]}
    jobs = [{"prompt": "a", **SIM}, {"prompt": "b", **SIM}, {"prompt": "c", **SIM, "webhook": own}]
    batch = post_batch(api, jobs, {"url": receiver.url})  # events omitted: all three

    assert Batch.objects.get().webhook == {
        "url": receiver.url,
        "events": ["batch.completed", "job.dead", "job.succeeded"],
    }
    by_prompt = dict(AIJob.objects.values_list("prompt", "webhook"))
    inherited = {"url": receiver.url, "events": ["job.dead", "job.succeeded"]}
    assert by_prompt == {"a": inherited, "b": inherited, "c": own}, "an item's own webhook wins, whole"

    run_webhook_worker(until=lambda: receiver.count() >= 3 and settled())

    events = receiver.events()
    assert all(event.verified for event in events.values())
    assert sorted(event.body["type"] for event in events.values()) == ["batch.completed", *["job.succeeded"] * 2]
    succeeded = {event.body["data"]["prompt"] for event in events.values() if event.body["type"] == "job.succeeded"}
    assert succeeded == {"a", "b"}, "c asked its own webhook for job.dead only"
    assert_delivered_after_every_job(batch["id"], receiver)


def test_cancel_mid_batch_sends_one_canceled_event_once_the_running_job_ends(api, receiver, run_webhook_worker):
    batch_id = post_batch(api, [{"prompt": f"p{i}", **SIM} for i in range(6)], {"url": receiver.url})["id"]
    assert WebhookDelivery.objects.count() == 0
    first, second, *_ = AIJob.objects.filter(batch_id=batch_id).order_by("created_at")
    claimed = transitions.job_claim(job_id=first.id, rq_job_id=first.rq_job_id)
    pipeline._attempt(claimed, chains.route_attempt(job=claimed), limits=[])  # ran to success: its job.succeeded
    running = transitions.job_claim(job_id=second.id, rq_job_id=second.rq_job_id)  # a worker holds this one
    for job in (first, second):
        delivery_delete(job.rq_job_id)

    assert api.post(f"{BATCHES}/{batch_id}/cancel").json()["status"] == "canceled"
    assert completed_events() == [], "one job still runs: the batch has not finished"

    pipeline._attempt(running, chains.route_attempt(job=running), limits=[])  # the running job ends: the batch finishes

    [delivery] = completed_events()
    assert delivery.payload["data"]["status"] == "canceled" and delivery.payload["data"]["finished_at"] is not None
    assert delivery.payload["data"]["counts"]["canceled"] == 4 and delivery.payload["data"]["counts"]["succeeded"] == 2
    run_webhook_worker(until=lambda: receiver.count() >= 3 and settled())
    body = assert_delivered_after_every_job(batch_id, receiver)
    assert body["data"]["status"] == "canceled" and body["data"] == api.get(f"{BATCHES}/{batch_id}").json()
    assert len(completed_events()) == 1


def test_a_batch_canceled_with_nothing_running_sends_its_event_with_the_cancel(api, receiver, run_webhook_worker):
    batch_id = post_batch(api, [{"prompt": f"p{i}", **SIM} for i in range(3)], {"url": receiver.url})["id"]

    assert api.post(f"{BATCHES}/{batch_id}/cancel").status_code == 200

    [delivery] = completed_events()
    assert delivery.payload["data"]["status"] == "canceled"
    assert delivery.payload["data"]["counts"]["canceled"] == 3
    run_webhook_worker(until=lambda: receiver.count() >= 1 and settled())
    body = assert_delivered_after_every_job(batch_id, receiver)
    assert body["data"]["status"] == "canceled"


@pytest.mark.parametrize(
    ("webhook", "says"),
    [
        ({"url": "https://192.168.1.5/hook"}, "webhook.url must point at a public address"),
        ({"url": "https://10.0.0.1/hook", "events": ["batch.completed"]}, "webhook.url must point at a public address"),
        ({"url": "http://hooks.example.com/hook"}, "webhook.url must use https"),
        ({"url": "https://hooks.example.com/hook", "events": ["job.started"]}, "webhook.events: unknown event"),
        ({"url": "https://hooks.example.com/hook", "events": []}, "webhook.events must be a non-empty list"),
        ({"url": "https://hooks.example.com/hook", "secret": "x"}, "webhook has unknown fields"),
        ("https://hooks.example.com/hook", "webhook must be an object"),
        (None, "webhook"),
    ],
)
def test_a_bad_batch_webhook_is_a_400_naming_the_field_and_writes_nothing(api, redis_conn, webhook, says):
    body = {"jobs": [{"prompt": "a"}, {"prompt": "b"}], "webhook": webhook}
    error = assert_error(api.post(BATCHES, body, format="json"), 400)
    assert says in error["message"] + str(error["details"]), error
    assert not Batch.objects.exists() and not AIJob.objects.exists()
    assert not WebhookSecret.objects.exists() and not WebhookDelivery.objects.exists()
    assert sum(queue.count for queue in all_queues()) == 0 and tries_in_redis(redis_conn) == 0


def test_a_batch_whose_finish_rolls_back_writes_no_event(user, redis_conn):
    spec = {"url": "http://127.0.0.1:9/hook", "events": ["batch.completed"]}
    batch, _ = batch_submit(owner=user, jobs=[{"prompt": "a"}, {"prompt": "b"}], webhook=spec)
    AIJob.objects.filter(batch=batch).update(status=JobStatus.SUCCEEDED)
    counted = finished_count("completed")

    with pytest.raises(RuntimeError), transaction.atomic():
        assert [b.id for b in accounting.batches_settle([batch.id])] == [batch.id]
        assert len(completed_events()) == 1, "written in the finishing transaction"
        raise RuntimeError("the commit never happens")

    assert completed_events() == [] and tries_in_redis(redis_conn) == 0
    assert Batch.objects.get(id=batch.id).finished_at is None, "the finish rolled back with it"
    assert finished_count("completed") == counted, "nor was it counted"

    # the next settle (a later job end, reconcile) finishes it, with its one event
    assert [b.id for b in accounting.batches_settle([batch.id])] == [batch.id]
    [delivery] = completed_events()
    assert delivery.subject_id == str(batch.id) and delivery.payload["data"]["status"] == "completed"
    assert tries_in_redis(redis_conn) == 1 and finished_count("completed") == counted + 1
    assert accounting.batches_settle([batch.id]) == [] and len(completed_events()) == 1


def test_a_batch_webhook_is_part_of_its_idempotency_fingerprint(api, redis_conn):
    body = {"jobs": [{"prompt": "a"}], "webhook": {"url": "https://hooks.example.com/a"}}
    assert api.post(BATCHES, body, format="json", HTTP_IDEMPOTENCY_KEY="k").status_code == 201
    assert api.post(BATCHES, body, format="json", HTTP_IDEMPOTENCY_KEY="k").status_code == 200
    other = {**body, "webhook": {"url": "https://hooks.example.com/b"}}
    assert_error(api.post(BATCHES, other, format="json", HTTP_IDEMPOTENCY_KEY="k"), 409)
    assert_error(api.post(BATCHES, {"jobs": body["jobs"]}, format="json", HTTP_IDEMPOTENCY_KEY="k"), 409)
    assert Batch.objects.count() == 1


def test_a_batch_of_a_thousand_sends_one_batch_completed(api, receiver, redis_conn):
    """1,000 simulated jobs at zero latency through a real (non-forking) worker: one event, after the last."""
    jobs = [{"prompt": f"page {i}", **SIM} for i in range(1000)]
    batch = post_batch(api, jobs, {"url": receiver.url, "events": ["batch.completed"]})
    queues = [Queue(WEBHOOK_QUEUE, connection=redis_conn), *all_queues()]

    deadline = time.monotonic() + 120
    while not (receiver.count() >= 1 and settled()):
        AIPBSimpleWorker(queues, connection=redis_conn).work(burst=True, with_scheduler=True, logging_level="WARNING")
        assert time.monotonic() < deadline, "the batch did not finish within 120 s"

    body = assert_delivered_after_every_job(batch["id"], receiver)
    assert body["data"]["counts"]["succeeded"] == 1000 and body["data"]["status"] == "completed"
    assert WebhookDelivery.objects.count() == 1 and receiver.count() == 1
