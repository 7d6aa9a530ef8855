"""Sending the outbox (orchestration): one try of one delivery, its retries, re-sends and the sweeper.

A try runs on the webhook queue (aipb.queue_names.WEBHOOK_QUEUE) as ``webhook_deliver(delivery_id, attempt)``:

  1 claim: UPDATE … SET attempts = <attempt> WHERE status = 'pending' AND attempts = <attempt> - 1, so a
    duplicate or stale RQ job (the sweeper's, a re-send's) finds nothing; next_attempt_at becomes the try's
    lease, past which the sweeper takes the row back (a worker killed mid-send)
  2 resolve the URL's host now and refuse a non-public answer (webhooks.ssrf), then connect to that address
  3 sign (Standard Webhooks, every secret in force) and POST with a timeout, no redirects, the answer read up
    to RESPONSE_CAP bytes
  4 record: delivered (2xx), or a retry scheduled after AI_WEBHOOK_RETRY_SCHEDULE's next delay, or failed
    (the schedule is used up, or the address was refused); conditional on the claimed attempt
  5 metrics

Receivers see each event at least once (a try whose answer was lost is sent again), with one webhook-id.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx2
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connections, transaction
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from aipb.exceptions import Conflict, NotFound
from aipb.redis_client import get_redis
from audit.models import AuditAction
from audit.records import Actor, audit_record
from jobs.redis_state import DeliveryView
from monitoring import metrics
from webhooks.models import DeliveryStatus, WebhookDelivery
from webhooks.records import (
    DELIVERY_JOB_TIMEOUT_MARGIN,
    delivery_enqueue,
    delivery_enqueue_on_commit,
    delivery_rq_id,
    signing_secrets,
    webhook_secret_ensure,
)
from webhooks.ssrf import Refused, Unresolvable, address_resolve

log = logging.getLogger(__name__)

RESPONSE_CAP = 4096  # bytes of the receiver's answer read (and the first ERROR_CHARS kept for the operator)
ERROR_CHARS = 300
USER_AGENT = "aipb-webhooks/1"
SWEEP_GRACE_SECONDS = 30  # a row this overdue has lost its RQ job (or the queue is far behind: checked in Redis)
SWEEP_BATCH = 1000


@dataclass(frozen=True)
class Sent:
    status_code: int | None = None
    seconds: float | None = None
    error: str = ""
    refused: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def webhook_deliver(delivery_id: int, attempt: int) -> str:
    """One try (the RQ entry point). Returns what happened, for the RQ result and the logs."""
    delivery = _claim(delivery_id, attempt)
    if delivery is None:
        return "skipped: nothing to claim"
    secrets = _secrets(delivery)
    _release_connection()
    sent = _send(delivery, secrets)
    outcome = _record(delivery, attempt, sent)
    if outcome is None:
        return "skipped: changed while it was sent"
    metrics.webhook_delivery_tried(outcome=outcome, seconds=sent.seconds)
    log.info("webhook delivery %s try %s: %s (%s)", delivery_id, attempt, outcome, sent.status_code or sent.error[:100])
    return outcome


def _lease_seconds() -> float:
    return settings.AI_WEBHOOK_TIMEOUT_SECONDS + DELIVERY_JOB_TIMEOUT_MARGIN


def _claim(delivery_id: int, attempt: int) -> WebhookDelivery | None:
    now = timezone.now()
    rows = list(
        WebhookDelivery.objects.raw(
            """
            UPDATE webhooks_webhookdelivery
               SET attempts = %s, last_attempt_at = %s, next_attempt_at = %s
             WHERE id = %s AND status = %s AND attempts = %s
         RETURNING *
            """,
            [attempt, now, now + timedelta(seconds=_lease_seconds()), delivery_id, DeliveryStatus.PENDING, attempt - 1],
        )
    )
    return rows[0] if rows else None


def _secrets(delivery: WebhookDelivery) -> list[str]:
    found = signing_secrets(owner_id=delivery.owner_id)
    if not found:  # an event added for an owner who never submitted a webhook (a caller that did not ensure one)
        found = [webhook_secret_ensure(owner=delivery.owner).secret]
    return found


def _release_connection() -> None:
    """As the pipeline does around a provider call: with a connection pool (threaded workers) no connection is
    held while a receiver takes its time; the record takes one again."""
    if connections["default"].settings_dict["OPTIONS"].get("pool"):
        connections["default"].close()


def _signature(delivery: WebhookDelivery, secrets: list[str], at: datetime, body: str) -> str:
    # Standard Webhooks: several space-delimited signatures; a receiver accepts any it can verify (rotation).
    return " ".join(Webhook(secret).sign(delivery.webhook_id, at, body) for secret in secrets)


def _send(delivery: WebhookDelivery, secrets: list[str]) -> Sent:
    body = json.dumps(delivery.payload, cls=DjangoJSONEncoder, separators=(",", ":"))
    at = datetime.now(UTC)
    started = time.monotonic()
    try:
        url = httpx2.URL(delivery.url)
        host = url.host
        port = url.port or (443 if url.scheme == "https" else 80)
        address = address_resolve(host, port)
    except Refused as exc:
        return Sent(error=str(exc), refused=True)
    except (Unresolvable, httpx2.InvalidURL) as exc:
        return Sent(error=str(exc), seconds=time.monotonic() - started)
    headers = {
        # the name the URL gave, though the connection goes to the address checked above
        "host": url.netloc.decode("ascii"),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": delivery.webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": _signature(delivery, secrets, at, body),
    }
    extensions = {"sni_hostname": host} if url.scheme == "https" else {}  # TLS checks the name, not the address
    timeout = settings.AI_WEBHOOK_TIMEOUT_SECONDS
    deadline = started + timeout
    try:
        # trust_env off: a proxy from the environment would resolve the name itself, past the check above
        with (
            httpx2.Client(timeout=httpx2.Timeout(timeout), follow_redirects=False, trust_env=False) as client,
            client.stream(
                "POST", url.copy_with(host=address), content=body.encode(), headers=headers, extensions=extensions
            ) as response,
        ):
            answer = b""
            for chunk in response.iter_raw():
                answer += chunk
                if len(answer) >= RESPONSE_CAP or time.monotonic() > deadline:
                    break  # a receiver that talks on and on (or drips) does not hold the worker
            seconds = time.monotonic() - started
            error = "" if 200 <= response.status_code < 300 else _clip(answer)
            return Sent(status_code=response.status_code, seconds=seconds, error=error)
    except httpx2.TimeoutException as exc:
        return Sent(error=f"timed out after {timeout:g}s: {exc.__class__.__name__}", seconds=time.monotonic() - started)
    except httpx2.HTTPError as exc:
        return Sent(error=f"{exc.__class__.__name__}: {exc}"[:ERROR_CHARS], seconds=time.monotonic() - started)


def _clip(answer: bytes) -> str:
    return answer[:ERROR_CHARS].decode("utf-8", "replace").replace("\x00", "")


def retry_delay(number_in_budget: int) -> float:
    """Seconds before the try after try ``number_in_budget`` (1-based): the schedule's delay plus up to 20 % jitter,
    so many deliveries that failed together do not come back together."""
    schedule = settings.AI_WEBHOOK_RETRY_SCHEDULE
    base = schedule[min(number_in_budget, len(schedule)) - 1]
    return base * random.uniform(1.0, 1.2)


@transaction.atomic
def _record(delivery: WebhookDelivery, attempt: int, sent: Sent) -> str | None:
    now = timezone.now()
    mine = WebhookDelivery.objects.filter(id=delivery.id, status=DeliveryStatus.PENDING, attempts=attempt)
    common = {
        "last_status_code": sent.status_code,
        "last_latency_ms": int(sent.seconds * 1000) if sent.seconds is not None else None,
        "last_error": sent.error,
    }
    if sent.ok:
        changed = mine.update(status=DeliveryStatus.DELIVERED, delivered_at=now, next_attempt_at=None, **common)
        return "delivered" if changed else None
    if sent.refused or delivery.attempts_left <= 0:
        changed = mine.update(status=DeliveryStatus.FAILED, next_attempt_at=None, **common)
        return ("refused" if sent.refused else "failed") if changed else None
    delay = retry_delay(attempt - delivery.attempts_base)
    if not mine.update(next_attempt_at=now + timedelta(seconds=delay), **common):
        return None
    delivery_enqueue_on_commit(delivery_id=delivery.id, attempt=attempt + 1, delay=delay)
    return "retrying"


# --- operators: re-send ---


@transaction.atomic
def webhook_delivery_resend(
    *, delivery_id: object, owner: AbstractBaseUser | None = None, actor: Actor | None = None
) -> WebhookDelivery:
    """A failed (or delivered) delivery goes out again with a fresh budget of tries and the same webhook-id.
    ``owner``: only their own (the API for a user who is not staff). Someone else's is audited."""
    qs = WebhookDelivery.objects.all() if owner is None else WebhookDelivery.objects.filter(owner=owner)
    try:
        delivery = qs.get(id=int(delivery_id))
    except (WebhookDelivery.DoesNotExist, ValueError, TypeError, OverflowError):
        raise NotFound(f"webhook delivery {delivery_id} not found") from None
    before = delivery.status
    changed = WebhookDelivery.objects.filter(
        id=delivery.id, status__in=(DeliveryStatus.FAILED, DeliveryStatus.DELIVERED), attempts=delivery.attempts
    ).update(status=DeliveryStatus.PENDING, attempts_base=delivery.attempts, next_attempt_at=timezone.now())
    if not changed:
        raise Conflict(f"webhook delivery {delivery.id} is {before}; only failed or delivered ones can be re-sent")
    if actor is not None and not actor.owns(delivery.owner_id):
        audit_record(
            actor=actor,
            action=AuditAction.WEBHOOK_RESEND,
            target_type="webhook_delivery",
            target_id=delivery.id,
            details={"owner_id": delivery.owner_id, "status_before": before, "event_type": delivery.event_type},
        )
    delivery_enqueue_on_commit(delivery_id=delivery.id, attempt=delivery.attempts + 1)
    delivery.refresh_from_db()
    return delivery


# --- the sweeper (`manage.py reconcile`, `manage.py webhooks sweep`) ---


def webhooks_sweep(*, grace_seconds: float = SWEEP_GRACE_SECONDS, dry_run: bool = False) -> list[int]:
    """Re-enqueue pending deliveries whose next try is overdue and that Redis holds no live RQ job for (a
    flush, a restart, an enqueue that failed after commit, a worker killed mid-try past its lease). Returns
    their ids. A try enqueued twice is harmless: the claim lets one run."""
    now = timezone.now()
    overdue = list(
        WebhookDelivery.objects.filter(
            status=DeliveryStatus.PENDING, next_attempt_at__lt=now - timedelta(seconds=grace_seconds)
        )
        .order_by("next_attempt_at")
        .values_list("id", "attempts")[:SWEEP_BATCH]
    )
    if not overdue:
        return []
    wanted = {
        delivery_rq_id(delivery_id, attempts + 1): (delivery_id, attempts + 1) for delivery_id, attempts in overdue
    }
    alive = DeliveryView(get_redis(), now=now, grace_seconds=grace_seconds).alive(list(wanted))
    lost = [pair for rq_id, pair in wanted.items() if rq_id not in alive]
    if not dry_run:
        for delivery_id, attempt in lost:
            delivery_enqueue(delivery_id=delivery_id, attempt=attempt)
    if lost:
        log.warning(
            "webhooks: %s %d deliveries Redis had lost", "would re-enqueue" if dry_run else "re-enqueued", len(lost)
        )
    return [delivery_id for delivery_id, _ in lost]
