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
from jobs.models import AIJob
from jobs.providers.base import Usage
from schedules.models import Schedule
from schedules.services import schedule_create
from tests.factories import submit_job
from usage.recording import usage_record


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
    return Owned(
        queued=queued,
        dead=dead,
        dead_letter=DeadLetter.objects.get(job_uuid=dead.id),
        jobs=[queued, dead],
        schedule=schedule_create(
            owner=owner, cron="0 9 * * *", prompt=f"{tag}: a daily page", provider="simulated", model="sim-small"
        ),
    )


@pytest.fixture
def world(user, other_user, redis_conn) -> World:
    """User A (``user``, alice) and user B (``other_user``, bob) each own a queued job, a dead job with an
    open dead letter, and a usage row."""
    return World(a=make_owned(user, "alice"), b=make_owned(other_user, "bob"))
