"""Security fixtures: token credentials for user A, user B and staff, and a small world of their objects
(jobs in several states, dead letters, usage rows) made through the real services and pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from dlq.models import DeadLetter
from jobs import pipeline
from jobs.batches import batch_submit
from jobs.models import AIJob, Batch
from jobs.providers.base import Usage
from schedules.models import Schedule
from schedules.services import schedule_create
from tests.factories import submit_job
from usage.recording import usage_record
from webhooks.models import DeliveryStatus, WebhookDelivery
from webhooks.records import webhook_event_add


def token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def auth_header(user) -> dict[str, str]:
    return {"Authorization": f"Token {Token.objects.get_or_create(user=user)[0].key}"}


@dataclass
class Owned:
    """One user's objects."""

    queued: AIJob
    dead: AIJob
    dead_letter: DeadLetter
    jobs: list[AIJob] = field(default_factory=list)
    schedule: Schedule | None = None
    delivery: WebhookDelivery | None = None  # a failed webhook delivery (re-sendable)
    batch: Batch | None = None  # a running batch of one waiting job


@dataclass
class World:
    a: Owned
    b: Owned


def _submit(owner, prompt: str, **simulate) -> AIJob:
    return submit_job(
        owner, prompt=prompt, provider="simulated", model="sim-small", simulate=simulate or None, max_attempts=1
    )


def make_owned(owner, tag: str) -> Owned:
    queued = _submit(owner, f"{tag}: a page that waits in the queue")
    dead = _submit(owner, f"{tag}: a page whose provider refuses the key", fail_attempts=1, error="auth")
    outcome = pipeline.run_attempt(str(dead.id), dead.rq_job_id)
    assert outcome.startswith("dead"), outcome
    dead.refresh_from_db()
    usage_record(job=queued, attempt=1, usage=Usage(prompt_tokens=100, completion_tokens=50), at=datetime.now(UTC))
    spec = {"url": "https://hooks.example.com/" + tag, "events": ["job.dead"]}
    delivery = webhook_event_add(owner=owner, spec=spec, event_type="job.dead", data={}, subject_id=str(dead.id))
    WebhookDelivery.objects.filter(id=delivery.id).update(status=DeliveryStatus.FAILED)
    batch, _ = batch_submit(
        owner=owner, jobs=[{"prompt": f"{tag}: a page of a batch", "provider": "simulated", "model": "sim-small"}]
    )
    return Owned(
        queued=queued,
        dead=dead,
        dead_letter=DeadLetter.objects.get(job_uuid=dead.id),
        jobs=[queued, dead, *batch.jobs.all()],
        schedule=schedule_create(
            owner=owner, cron="0 9 * * *", prompt=f"{tag}: a daily page", provider="simulated", model="sim-small"
        ),
        delivery=delivery,
        batch=batch,
    )


@pytest.fixture
def world(user, other_user, redis_conn) -> World:
    """User A (``user``, alice) and user B (``other_user``, bob) each own a queued job, a dead job with an
    open dead letter, and a usage row."""
    return World(a=make_owned(user, "alice"), b=make_owned(other_user, "bob"))
