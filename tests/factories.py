"""factory_boy factories, and the one way tests submit a job.

The model factories write rows directly: right for read-side tests (lists, filters, reports, retention,
admin pages), where how a row came to be does not matter. A job that must move through its states is
made by ``submit_job`` (the real jobs.submission.job_submit) and moved by the pipeline, the transitions
and the operator actions — never by writing its status here, which would test our guess of the state
machine instead of the state machine.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import factory
from django.contrib.auth import get_user_model
from django.utils import timezone

from dlq.models import DeadLetter
from jobs.errors import ErrorType
from jobs.models import AIJob, AttemptOutcome, JobAttempt, JobStatus
from jobs.submission import job_submit
from usage.models import ModelPrice, TokenUsage

DEFAULT_PROMPT = "A landing page for a bakery in Lisbon"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    is_staff = False

    @factory.post_generation
    def password(self, create, extracted, **kwargs):
        self.set_password(extracted or "correct-horse-battery")
        if create:
            self.save(update_fields=["password"])


class AIJobFactory(factory.django.DjangoModelFactory):
    """A job row as it would be read back; no delivery exists for it in Redis."""

    class Meta:
        model = AIJob

    owner = factory.SubFactory(UserFactory)
    provider = "simulated"
    model = "sim-small"
    prompt = factory.Sequence(lambda n: f"A page for shop {n}")
    status = JobStatus.QUEUED


class JobAttemptFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = JobAttempt

    job = factory.SubFactory(AIJobFactory, status=JobStatus.SUCCEEDED, attempts=1)
    number = 1
    started_at = factory.LazyFunction(timezone.now)
    finished_at = factory.LazyAttribute(lambda a: a.started_at + timedelta(milliseconds=a.latency_ms or 0))
    outcome = AttemptOutcome.SUCCEEDED
    latency_ms = 250
    prompt_tokens = 100
    completion_tokens = 50
    validation_passed = factory.LazyAttribute(lambda a: a.outcome == AttemptOutcome.SUCCEEDED)


class DeadLetterFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = DeadLetter

    job = factory.SubFactory(AIJobFactory, status=JobStatus.DEAD, attempts=1, error_type=ErrorType.AUTH_ERROR)
    job_uuid = factory.LazyAttribute(lambda d: d.job.id if d.job else None)
    error_type = ErrorType.AUTH_ERROR
    error_message = "simulated: invalid API key"
    retryable = False
    attempts = 1
    provider = factory.LazyAttribute(lambda d: d.job.provider if d.job else "simulated")
    model = factory.LazyAttribute(lambda d: d.job.model if d.job else "sim-small")
    payload = factory.LazyAttribute(lambda d: {"job": {"id": str(d.job_uuid)}, "attempt_history": []})


class TokenUsageFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TokenUsage

    owner = factory.SubFactory(UserFactory)
    job = factory.SubFactory(AIJobFactory, owner=factory.SelfAttribute("..owner"), status=JobStatus.SUCCEEDED)
    attempt = 1
    provider = factory.LazyAttribute(lambda u: u.job.provider if u.job else "simulated")
    model = factory.LazyAttribute(lambda u: u.job.model if u.job else "sim-small")
    prompt_tokens = 100
    completion_tokens = 50
    # at sim-small's seeded price, 1 / 2 USD per million tokens in / out
    cost = factory.LazyAttribute(
        lambda u: (Decimal(u.prompt_tokens) + 2 * Decimal(u.completion_tokens)) / Decimal(1_000_000)
    )
    created_at = factory.LazyFunction(timezone.now)


class ModelPriceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ModelPrice

    provider = "simulated"
    model = "sim-small"
    input_per_million = Decimal("1")
    output_per_million = Decimal("2")
    # (provider, model, effective_from) is unique: each price its own day, all long in force
    effective_from = factory.Sequence(lambda n: datetime(2001, 1, 1, tzinfo=UTC) + timedelta(days=n))


def submit_job(owner, *, simulate: dict | None = None, **kwargs) -> AIJob:
    """Submit through jobs.submission.job_submit (validation, row, delivery enqueued on commit).

    ``simulate`` picks the simulated provider (sim-small unless ``model`` says otherwise) with these
    ``options.simulate``; everything else goes to job_submit as given.
    """
    kwargs.setdefault("prompt", DEFAULT_PROMPT)
    if simulate is not None:
        kwargs.setdefault("provider", "simulated")
        kwargs.setdefault("model", "sim-small")
        kwargs["options"] = {**kwargs.get("options", {}), "simulate": simulate}
    job, created = job_submit(owner=owner, **kwargs)
    assert created, "job_submit replayed an earlier submission instead of creating a job"
    return job
