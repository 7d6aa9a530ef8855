"""Submission: validate a new job, write its row and its attempt budget in one transaction, enqueue on commit.

That transaction is one statement (jobs.admission): the INSERT, with the reads that could refuse it (a repeated
Idempotency-Key, the owner's waiting cap, the owner's spending limits) in the same statement. Outside a caller's
transaction it runs in autocommit, one round trip (``transaction.atomic`` would add BEGIN and COMMIT, two more,
around the one write), and ``on_commit`` enqueues as soon as it returns; a refusal writes nothing. Inside a
caller's transaction the row joins it and is enqueued when the caller commits."""

from __future__ import annotations

import hashlib
import json
import math
from contextlib import nullcontext
from typing import TypeVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction
from redis.exceptions import RedisError

from aipb.exceptions import Conflict, IntakeClosed, InvalidInput
from aipb.redis_client import best_effort
from jobs import catalogue, queues
from jobs.admission import job_admit
from jobs.models import MAX_ATTEMPTS_LIMIT, AIJob, Priority
from jobs.providers.simulated import validate_simulate_options
from jobs.routing.chains import fallbacks_clean, policy_clean
from jobs.tracing import submission_traceparent
from jobs.transitions import enqueue_on_commit, next_delivery
from webhooks.records import webhook_secret_ensure, webhook_spec_clean

MAX_OPTIONS_DEPTH = 5
T = TypeVar("T")  # a row with request_fingerprint: a job or a batch


def _fingerprint(**fields: object) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _depth(value: object, level: int = 0) -> int:
    if level > MAX_OPTIONS_DEPTH:
        return level  # deep enough to refuse; don't recurse down 900 levels of hostile JSON
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def _unstorable(value: object) -> str | None:
    """What PostgreSQL's jsonb cannot hold (a 500 at INSERT time otherwise); called on bounded depth."""
    if isinstance(value, str):
        if "\x00" in value:
            return "must not contain NUL characters"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "must be valid Unicode text (no lone surrogates)"
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "numbers must be finite"
    if isinstance(value, dict):
        return next(filter(None, (_unstorable(v) for item in value.items() for v in item)), None)
    if isinstance(value, list):
        return next(filter(None, map(_unstorable, value)), None)
    return None


def json_object_checked(value: dict | None, *, what: str) -> dict:
    """A JSON object a client sends for us to store (a job's options, a batch's metadata): bounded in depth
    and size, and storable in jsonb."""
    value = dict(value or {})
    if _depth(value) > MAX_OPTIONS_DEPTH:  # first: the checks below recurse
        raise InvalidInput(f"{what} may nest at most {MAX_OPTIONS_DEPTH} levels deep")
    if len(json.dumps(value)) > settings.AI_MAX_OPTIONS_BYTES:
        raise InvalidInput(f"{what} must be at most {settings.AI_MAX_OPTIONS_BYTES} bytes of JSON")
    problem = _unstorable(value)
    if problem:
        raise InvalidInput(f"{what} {problem}")
    return value


def _clean_options(options: dict | None, provider: str) -> dict:
    options = json_object_checked(options, what="options")
    if "simulate" in options:
        if provider != "simulated":
            raise InvalidInput("options.simulate is only accepted with provider 'simulated'")
        try:
            options["simulate"] = validate_simulate_options(options["simulate"])
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    return options


def job_fields_clean(
    *,
    prompt: str,
    provider: str | None = None,
    model: str | None = None,
    priority: str = Priority.NORMAL,
    options: dict | None = None,
    max_attempts: int | None = None,
) -> dict:
    """The fields of a new job as submission checks them, defaults filled in, or InvalidInput. Also for what
    submits jobs later (schedules), so a template is refused when it is saved, by the same rules."""
    provider = provider or catalogue.default_provider()
    try:
        model = model or catalogue.default_model(provider)
        catalogue.lookup(provider, model)
    except (catalogue.CatalogueError, KeyError) as exc:
        raise InvalidInput(str(exc).strip("'")) from None
    if not catalogue.provider_configured(provider):
        raise InvalidInput(f"provider '{provider}' is not configured on this server")
    if not prompt or not prompt.strip():
        raise InvalidInput("prompt must not be empty")
    if problem := _unstorable(prompt):  # NUL, lone surrogates
        raise InvalidInput(f"prompt {problem}")
    if len(prompt) > settings.AI_MAX_PROMPT_CHARS:
        raise InvalidInput(f"prompt must be at most {settings.AI_MAX_PROMPT_CHARS} characters")
    if priority not in Priority.values:
        raise InvalidInput(f"priority must be one of {', '.join(Priority.values)}")
    max_attempts = settings.AI_MAX_ATTEMPTS if max_attempts is None else max_attempts
    if not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
        raise InvalidInput(f"max_attempts must be from 1 to {MAX_ATTEMPTS_LIMIT}")
    options = _clean_options(options, provider)
    return {
        "prompt": prompt,
        "provider": provider,
        "model": model,
        "priority": priority,
        "options": options,
        "max_attempts": max_attempts,
    }


def job_build(
    *,
    owner: AbstractBaseUser,
    prompt: str,
    provider: str | None = None,
    model: str | None = None,
    priority: str = Priority.NORMAL,
    options: dict | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    webhook: dict | None = None,
    fallbacks: list[dict] | None = None,
    routing_policy: str | None = None,
) -> AIJob:
    """A submission validated, as its unsaved row (fingerprinted, its first delivery named): what job_submit
    inserts, and what a batch (jobs.batches) inserts a thousand of at once."""
    fields = job_fields_clean(
        prompt=prompt, provider=provider, model=model, priority=priority, options=options, max_attempts=max_attempts
    )
    webhook = webhook_spec_clean(webhook)
    # jobs.routing: None = AI_FALLBACKS
    fallbacks = fallbacks_clean(fallbacks, provider=fields["provider"], model=fields["model"])
    routing_policy = policy_clean(routing_policy)
    # each only when used: a request without it keeps the fingerprint it had before it existed
    fingerprint = _fingerprint(
        **fields,
        **({"webhook": webhook} if webhook else {}),
        **({"fallbacks": fallbacks} if fallbacks is not None else {}),
        **({"routing_policy": routing_policy} if routing_policy != "ordered" else {}),
    )
    job = AIJob(
        owner=owner,
        **fields,
        idempotency_key=idempotency_key,
        request_fingerprint=fingerprint,
        webhook=webhook,
        fallbacks=fallbacks,
        routing_policy=routing_policy,
        traceparent=submission_traceparent(),
    )
    job.deliveries, job.rq_job_id = next_delivery(job)
    return job


def job_submit(
    *,
    owner: AbstractBaseUser,
    prompt: str,
    provider: str | None = None,
    model: str | None = None,
    priority: str = Priority.NORMAL,
    options: dict | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
    webhook: dict | None = None,
    fallbacks: list[dict] | None = None,
    routing_policy: str | None = None,
) -> tuple[AIJob, bool]:
    """Create a job and enqueue it on commit. Returns (job, created); an idempotent replay is not created."""
    intake_check()
    job = job_build(
        owner=owner,
        prompt=prompt,
        provider=provider,
        model=model,
        priority=priority,
        options=options,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
        webhook=webhook,
        fallbacks=fallbacks,
        routing_policy=routing_policy,
    )
    fingerprint = job.request_fingerprint
    # a webhook's events are signed with the owner's secret: made with the row, in its transaction, so that a
    # refusal writes neither (the owner can fetch it by rotating)
    with transaction.atomic() if job.webhook else nullcontext():
        try:
            if idempotency_key is not None and connection.in_atomic_block:
                with transaction.atomic():  # a savepoint: a collision must not doom the caller's transaction
                    admission = job_admit(job)
            else:
                admission = job_admit(job)  # nothing can collide, or a collision fails only its own statement
        except IntegrityError:
            replayed = key_race_replay(AIJob, owner=owner, idempotency_key=idempotency_key, fingerprint=fingerprint)
            if replayed is None:
                raise
            return replayed, False
        if admission.existing is not None:
            return idempotent_replay(admission.existing, fingerprint), False
        if job.webhook:
            webhook_secret_ensure(owner=owner)
    enqueue_on_commit(job, fail_fast=True)
    return job, True


INTAKE_RETRY_AFTER_SECONDS = 60


def intake_check() -> None:
    """503 (IntakeClosed) while an operator has intake closed."""
    try:
        closed = queues.intake_closed_info(best_effort)
    except RedisError:  # Redis down: nobody can have closed intake since; submissions go on (reconcile delivers)
        return
    if closed is not None:
        reason = f": {closed['reason']}" if closed.get("reason") else ""
        raise IntakeClosed(
            f"intake is closed by an operator{reason}; try again later",
            details={"closed_at": closed.get("at"), "reason": closed.get("reason", "")},
            retry_after=INTAKE_RETRY_AFTER_SECONDS,
        )


def key_race_replay(
    model: type[T], *, owner: AbstractBaseUser, idempotency_key: str | None, fingerprint: str
) -> T | None:
    """After an IntegrityError writing a job or a batch: two requests with one Idempotency-Key raced and the other
    one's row is committed; that row, replayed (Conflict if the bodies differ). None when there is no such row: the
    error was something else, for the caller to raise."""
    if idempotency_key is None:
        return None
    existing = model.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
    return None if existing is None else idempotent_replay(existing, fingerprint)


def idempotent_replay(existing: T, fingerprint: str) -> T:
    """The row an Idempotency-Key already made (a job or a batch), if the request is the same one."""
    if existing.request_fingerprint != fingerprint:
        raise Conflict("this Idempotency-Key was already used with a different request body")
    return existing
