"""The outbox: an event's row is written in the transaction of the change it reports (the pipeline's end of
an attempt, lease recovery's death), so a rolled-back change leaves none and nothing reaches Redis for it;
the spec's validation at submit; the signing secret."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone
from rq import Queue

from aipb.exceptions import InvalidInput
from aipb.queue_names import WEBHOOK_QUEUE
from jobs import pipeline, transitions
from jobs.errors import Classified, ErrorType
from jobs.models import AIJob, JobStatus
from jobs.recovery import jobs_reconcile
from jobs.transitions import AttemptRecord
from tests.factories import submit_job
from tests.fakes.base import SAMPLE_PAGE
from webhooks.models import WebhookDelivery, WebhookSecret
from webhooks.records import webhook_secret_ensure, webhook_secret_rotate, webhook_spec_clean

pytestmark = pytest.mark.django_db(transaction=True)

SPEC = {"url": "http://127.0.0.1:9/hook", "events": ["job.succeeded", "job.dead"]}


def _claimed(user, **kwargs) -> AIJob:
    job = submit_job(user, webhook=SPEC, **kwargs)
    return transitions.job_claim(job_id=str(job.id), rq_job_id=job.rq_job_id)


def _record(job: AIJob) -> AttemptRecord:
    now = timezone.now()
    return AttemptRecord(
        number=job.attempts,
        started_at=now,
        finished_at=now,
        latency_ms=5,
        usage=None,
        request_id=None,
        validation_passed=True,
    )


def _tries_in_redis(redis_conn) -> int:
    queue = Queue(WEBHOOK_QUEUE, connection=redis_conn)
    return queue.count + queue.scheduled_job_registry.count


def test_a_rolled_back_success_writes_no_event_and_enqueues_nothing(user, redis_conn):
    job = _claimed(user)

    with pytest.raises(RuntimeError), transaction.atomic():
        pipeline._record(job, _record(job), SAMPLE_PAGE, None)
        assert WebhookDelivery.objects.count() == 1, "written inside the attempt's transaction"
        raise RuntimeError("the commit never happens")

    assert WebhookDelivery.objects.count() == 0
    assert AIJob.objects.get(id=job.id).status == JobStatus.RUNNING
    assert _tries_in_redis(redis_conn) == 0, "no try for a change that rolled back"


def test_a_committed_success_has_its_event_and_its_try(user, redis_conn):
    job = _claimed(user)

    pipeline._record(job, _record(job), SAMPLE_PAGE, None)

    delivery = WebhookDelivery.objects.get()
    assert delivery.event_type == "job.succeeded" and delivery.status == "pending"
    data = delivery.payload["data"]
    assert data["status"] == "succeeded" and data["result"] == SAMPLE_PAGE
    assert [attempt["outcome"] for attempt in data["attempt_history"]] == ["succeeded"], "this attempt included"
    assert _tries_in_redis(redis_conn) == 1


def test_a_retry_writes_no_event(user, redis_conn):
    job = _claimed(user, max_attempts=3)
    error = Classified(type=ErrorType.TIMEOUT, retryable=True, message="slow")
    pipeline._record(job, _record(job), None, error)
    assert AIJob.objects.get(id=job.id).status == JobStatus.RETRYING
    assert not WebhookDelivery.objects.exists()


def test_a_death_found_by_lease_recovery_writes_job_dead(user, redis_conn):
    job = _claimed(user, max_attempts=1)
    AIJob.objects.filter(id=job.id).update(lease_expires_at=timezone.now() - timedelta(seconds=5))

    report = jobs_reconcile()

    assert report.dead == [str(job.id)]
    delivery = WebhookDelivery.objects.get()
    assert delivery.event_type == "job.dead" and delivery.payload["data"]["error_type"] == "TIMEOUT"


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("http://127.0.0.1/hook", "object"),
        ({"url": "http://127.0.0.1/hook", "events": ["job.started"]}, "unknown event job.started"),
        ({"url": "http://127.0.0.1/hook", "events": ["batch.completed"]}, "unknown event"),  # a job's: not batches
        ({"url": "http://127.0.0.1/hook", "events": []}, "non-empty list"),
        ({"url": "http://127.0.0.1/hook", "events": "job.dead"}, "non-empty list"),
        ({"url": "http://127.0.0.1/hook", "events": [1]}, "non-empty list"),
        ({"url": "http://127.0.0.1/hook", "secret": "x"}, "unknown fields"),
        ({"events": ["job.dead"]}, "non-empty string"),
        ({"url": "http://hooks.example.com/x"}, "https"),
        ({"url": "https://10.1.2.3/x"}, "public"),
    ],
)
def test_a_bad_spec_is_refused(spec, says, settings):
    settings.AI_WEBHOOK_ALLOWED_HOSTS = frozenset({"127.0.0.1"})
    with pytest.raises(InvalidInput, match=says):
        webhook_spec_clean(spec)


def test_a_spec_without_events_asks_for_every_job_event(settings):
    settings.AI_WEBHOOK_ALLOWED_HOSTS = frozenset({"127.0.0.1"})
    assert webhook_spec_clean({"url": "http://127.0.0.1/h"}) == {
        "url": "http://127.0.0.1/h",
        "events": ["job.dead", "job.succeeded"],
    }
    assert webhook_spec_clean(
        {"url": "https://h.example.com/", "events": ["batch.completed"]}, events=("batch.completed",)
    )


def test_secret_ensure_creates_once_and_rotate_keeps_the_old_one_for_the_grace(user, settings):
    first = webhook_secret_ensure(owner=user)
    assert webhook_secret_ensure(owner=user).secret == first.secret
    rotated = webhook_secret_rotate(owner=user)
    assert rotated.secret != first.secret and rotated.previous_secret == first.secret
    grace = (rotated.previous_expires_at - timezone.now()).total_seconds()
    assert settings.AI_WEBHOOK_SECRET_GRACE_SECONDS - 5 < grace <= settings.AI_WEBHOOK_SECRET_GRACE_SECONDS
    assert WebhookSecret.objects.count() == 1
