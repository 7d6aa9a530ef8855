"""The webhook outbox under fire, with real processes (tests/e2e/harness.py): gunicorn, the AI workers,
`reconcile --every 2`, and a forking worker on the webhook queue; a loopback receiver that verifies every
signature with the `standardwebhooks` verifier.

The receiver is down when the jobs end, so their first tries fail and retries are scheduled in Redis; then the
webhook worker is SIGKILLed with its work-horse and scheduler, and Redis is flushed (every queued try and every
scheduled retry gone). Once the receiver and a new worker are back, every job's event must arrive, signed, one
per job (by webhook-id), with the type its final state calls for — found again from Postgres by reconcile's
sweep, nothing lost. A batch submitted alongside, its webhook asking for batch.completed, gets that one event
through the same outage.
"""

from __future__ import annotations

import uuid

import pytest

from jobs.models import AIJob
from tests.e2e.harness import ALIAS, FORKING, PYTHON, Stack, sim_job, wait_for
from tests.fakes.webhook_receiver import WebhookReceiver
from webhooks.models import DeliveryStatus, WebhookDelivery

pytestmark = pytest.mark.e2e

WEBHOOK_ENV = {
    "AI_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
    "AI_WEBHOOK_TIMEOUT_SECONDS": "2",
    "AI_WEBHOOK_RETRY_SCHEDULE": "1,2,2,2,2,2,2,2,2,2,2,2",  # enough tries to outlast the outage
}


def webhook_worker(stack: Stack):
    argv = [PYTHON, "manage.py", "rqworker", "ai-webhooks", "--with-scheduler", "--worker-class", FORKING]
    return stack.start("webhook-worker", argv)


def deliveries():
    return WebhookDelivery.objects.using(ALIAS)


def test_every_event_arrives_through_an_outage_a_worker_sigkill_and_a_redis_flush(stack):
    stack.env.update(WEBHOOK_ENV)
    receiver = WebhookReceiver().start()
    try:
        stack.gunicorn()
        stack.workers()
        stack.reconciler(every=2)
        status, body = stack.client().request("POST", "/api/ai/webhooks/secret")
        assert status == 201, body
        receiver.secrets = [body["secret"]]
        hook = {"url": receiver.url, "events": ["job.succeeded", "job.dead"]}
        specs = [sim_job(f"wh-ok-{i}", latency_ms=200) for i in range(24)]
        specs += [sim_job(f"wh-dead-{i}", expect="dead", error="auth", fail_attempts=5) for i in range(6)]
        for spec in specs:
            spec.body["webhook"] = hook

        # and a batch whose webhook asks for batch.completed alone: one event when its last job ends
        batch_body = {
            "jobs": [sim_job(f"wh-batch-{i}", latency_ms=200).body for i in range(6)],
            "webhook": {"url": receiver.url, "events": ["batch.completed"]},
        }

        receiver.stop()  # down: every first try is refused a connection, retries go to RQ's scheduled registry
        first_worker = webhook_worker(stack)
        status, batch = stack.client().request("POST", "/api/ai/batches", batch_body)
        assert status == 201, batch
        stack.submit(specs)
        stack.wait_final(timeout=180)
        wait_for(
            lambda: deliveries().filter(attempts__gte=2).count() >= 10,
            timeout=120,
            what="retries of the refused tries",
            interval=0.5,
        )
        assert deliveries().count() == len(specs) + 1, "one event per job, written with its end, and the batch's"
        assert not deliveries().filter(status=DeliveryStatus.DELIVERED).exists()

        assert stack.kill_worker(first_worker), "the webhook worker was SIGKILLed"
        stack.servers.redis.flushall()  # the queued tries and the scheduled retries are gone; the rows are not
        receiver.start()
        webhook_worker(stack)

        wait_for(
            lambda: not deliveries().exclude(status=DeliveryStatus.DELIVERED).exists(),
            timeout=300,
            what="every delivery to be delivered",
            interval=1.0,
        )
    finally:
        receiver.stop()

    jobs = AIJob.objects.using(ALIAS).filter(batch__isnull=True)
    statuses = {str(job_id): status for job_id, status in jobs.values_list("id", "status")}
    events = receiver.events()
    assert len(events) == len(specs) + 1, "every job's event and the batch's arrived, once per webhook-id"
    [done] = [event for event in events.values() if event.body["type"] == "batch.completed"]
    assert done.body["data"]["id"] == batch["id"] and done.body["data"]["status"] == "completed"
    assert done.body["data"]["counts"]["succeeded"] == 6 and done.body["data"]["finished_at"] is not None
    events = {key: event for key, event in events.items() if event is not done}
    assert {event.body["data"]["id"] for event in events.values()} == set(statuses)
    for event in events.values():
        assert event.body["type"] == f"job.{statuses[event.body['data']['id']]}"
        assert uuid.UUID(event.body["data"]["id"])
    assert all(item.verified for item in receiver.received), "every request carried a valid signature"
    assert sum(1 for status in statuses.values() if status == "dead") == 6
