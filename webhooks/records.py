"""The webhook outbox's writers and the signing secret (a leaf: the pipeline, lease recovery and batches call it).

``webhook_event_add`` writes an event's delivery row inside the caller's transaction, the one that makes the
state change the event reports, and enqueues its first try when that transaction commits: a change that rolls
back leaves no event, and a committed one always has its row, which webhooks.delivery's sweeper re-enqueues if
Redis loses the try (flush, restart, a worker killed). Also here: a webhook spec's validation (at submit) and
the per-user secret (create, rotate, the secrets that sign now).
"""

from __future__ import annotations

import base64
import logging
import secrets
from datetime import timedelta
from functools import partial

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone
from rq import Queue

from aipb.exceptions import InvalidInput
from aipb.queue_names import WEBHOOK_QUEUE
from aipb.redis_client import get_redis
from jobs.models import AIJob, JobStatus
from jobs.serializers import job_output
from webhooks.models import EventType, WebhookDelivery, WebhookSecret
from webhooks.ssrf import url_check

log = logging.getLogger(__name__)

# The events a job's webhook may ask for; a batch's may ask for batch.completed too (its job events go to the
# batch's jobs that carry no webhook of their own: jobs.batches).
JOB_EVENTS = (EventType.JOB_SUCCEEDED, EventType.JOB_DEAD)
BATCH_EVENTS = (*JOB_EVENTS, EventType.BATCH_COMPLETED)
_JOB_EVENT_OF_STATUS = {JobStatus.SUCCEEDED: EventType.JOB_SUCCEEDED, JobStatus.DEAD: EventType.JOB_DEAD}
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
# A try's RQ job may run at most this long: the send's own deadline plus room to record it.
DELIVERY_JOB_TIMEOUT_MARGIN = 30


# --- the spec a job or batch carries ---


def webhook_spec_clean(spec: object, *, events: tuple[str, ...] = JOB_EVENTS) -> dict | None:
    """{"url": ..., "events": [...]} checked (SSRF rules in webhooks.ssrf), or None; InvalidInput says why not."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise InvalidInput("webhook must be an object with url and events")
    unknown = sorted(set(spec) - {"url", "events"})
    if unknown:
        raise InvalidInput(f"webhook has unknown fields: {', '.join(map(str, unknown))}")
    url = url_check(spec.get("url"))
    wanted = spec.get("events", list(events))
    if not isinstance(wanted, list) or not wanted or not all(isinstance(name, str) for name in wanted):
        raise InvalidInput(f"webhook.events must be a non-empty list of: {', '.join(events)}")
    bad = sorted({name for name in wanted if name not in events})
    if bad:
        raise InvalidInput(f"webhook.events: unknown event {', '.join(bad)}; known: {', '.join(events)}")
    return {"url": url, "events": sorted(set(wanted))}


# --- the signing secret ---


def _new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def webhook_secret_ensure(*, owner: AbstractBaseUser) -> WebhookSecret:
    """The owner's secret, created if they have none (a webhook submitted before asking for one)."""
    existing = WebhookSecret.objects.filter(owner=owner).first()
    if existing is not None:
        return existing
    try:
        with transaction.atomic():  # a savepoint: a concurrent creation must not doom the caller's transaction
            return WebhookSecret.objects.create(owner=owner, secret=_new_secret())
    except IntegrityError:
        return WebhookSecret.objects.get(owner=owner)


@transaction.atomic
def webhook_secret_rotate(*, owner: AbstractBaseUser) -> WebhookSecret:
    """Create the owner's secret, or replace it: the old one keeps signing for AI_WEBHOOK_SECRET_GRACE_SECONDS."""
    current = WebhookSecret.objects.select_for_update().filter(owner=owner).first()
    if current is None:
        return webhook_secret_ensure(owner=owner)
    now = timezone.now()
    current.previous_secret = current.secret
    current.previous_expires_at = now + timedelta(seconds=settings.AI_WEBHOOK_SECRET_GRACE_SECONDS)
    current.secret = _new_secret()
    current.rotated_at = now
    current.save(update_fields=["secret", "previous_secret", "previous_expires_at", "rotated_at"])
    return current


def signing_secrets(*, owner_id: int) -> list[str]:
    """The secrets a delivery is signed with now: the current one, and the previous one during its grace."""
    row = WebhookSecret.objects.filter(owner_id=owner_id).first()
    if row is None:
        return []
    found = [row.secret]
    if row.previous_secret and row.previous_expires_at and row.previous_expires_at > timezone.now():
        found.append(row.previous_secret)
    return found


# --- events ---


def webhook_event_add(
    *, owner: AbstractBaseUser, spec: dict | None, event_type: str, data: dict, subject_id: object = ""
) -> WebhookDelivery | None:
    """Write an event to the outbox in the caller's transaction if the spec asks for it; its first try is
    enqueued on commit. ``spec`` is what webhook_spec_clean returned at submit; ``data`` what the API shows of
    the subject (job_output, the batch's output)."""
    if not spec or event_type not in spec.get("events", ()):
        return None
    now = timezone.now()
    delivery = WebhookDelivery.objects.create(
        owner=owner,
        event_type=event_type,
        subject_id=str(subject_id),
        url=spec["url"],
        payload={"type": event_type, "timestamp": now.isoformat().replace("+00:00", "Z"), "data": data},
        next_attempt_at=now,
    )
    delivery_enqueue_on_commit(delivery_id=delivery.id, attempt=1)
    return delivery


def webhook_event_wanted(*, job: AIJob, status: str) -> bool:
    """Whether the job's entry into `status` writes an event to the outbox (its webhook asks for it)."""
    spec = job.webhook
    event_type = _JOB_EVENT_OF_STATUS.get(status)
    return bool(spec) and event_type is not None and event_type in spec.get("events", ())


def webhook_job_ended(*, job: AIJob, status: str) -> WebhookDelivery | None:
    """The event for a job that just succeeded or died, in the transaction that made the change (the pipeline,
    lease recovery). Free for a job without a webhook: the claim's row already says so."""
    if not webhook_event_wanted(job=job, status=status):
        return None
    spec = job.webhook
    event_type = _JOB_EVENT_OF_STATUS[status]
    # The job as the API shows it now, this attempt included (read inside the transaction that changed it).
    fresh = AIJob.objects.select_related("owner").get(id=job.id)
    return webhook_event_add(
        owner=fresh.owner, spec=spec, event_type=event_type, data=job_output(fresh), subject_id=fresh.id
    )


# --- transport: the try's RQ job ---


def delivery_rq_id(delivery_id: int, attempt: int) -> str:
    """Each try has its own RQ id, so a lost one can be told from one that waits (the sweeper asks Redis)."""
    return f"webhook-{delivery_id}-{attempt}"


def delivery_enqueue(*, delivery_id: int, attempt: int, delay: float = 0.0) -> None:
    queue = Queue(WEBHOOK_QUEUE, connection=get_redis())
    kwargs = {
        "job_id": delivery_rq_id(delivery_id, attempt),
        "job_timeout": int(settings.AI_WEBHOOK_TIMEOUT_SECONDS) + DELIVERY_JOB_TIMEOUT_MARGIN,
        "result_ttl": 0,
        "failure_ttl": 86_400,
        "description": f"webhook delivery {delivery_id} try {attempt}",
    }
    with queue.connection.pipeline() as pipe:
        if delay > 0:
            queue.enqueue_in(
                timedelta(seconds=delay),
                "webhooks.delivery.webhook_deliver",
                delivery_id,
                attempt,
                pipeline=pipe,
                **kwargs,
            )
        else:
            queue.enqueue("webhooks.delivery.webhook_deliver", delivery_id, attempt, pipeline=pipe, **kwargs)
        pipe.execute()


def delivery_enqueue_on_commit(*, delivery_id: int, attempt: int, delay: float = 0.0) -> None:
    transaction.on_commit(partial(_enqueue_safely, delivery_id=delivery_id, attempt=attempt, delay=delay))


def _enqueue_safely(*, delivery_id: int, attempt: int, delay: float) -> None:
    # The row is committed: if Redis cannot take the try now, the sweeper enqueues it once it is overdue.
    try:
        delivery_enqueue(delivery_id=delivery_id, attempt=attempt, delay=delay)
    except Exception:
        log.warning("webhook delivery %s: enqueue failed; the sweeper will send it", delivery_id, exc_info=True)
