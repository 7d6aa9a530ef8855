"""RQ transport: which queue a job goes on and how a delivery is enqueued."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from django.conf import settings
from rq import Queue

from aipb.redis_client import get_redis

QUEUE_ORDER = ("ai-high", "ai-default", "ai-low")  # workers drain them in this order


def queue_name(priority: str) -> str:
    return settings.AI_QUEUES[priority]


def get_queue(name: str) -> Queue:
    return Queue(name, connection=get_redis())


def all_queues() -> list[Queue]:
    return [get_queue(name) for name in QUEUE_ORDER]


def _run_at(delay: float) -> datetime:
    # RQ's scheduled registry keeps whole seconds, rounded down: round up instead, so a
    # provider's Retry-After is never cut short.
    at = datetime.now(UTC) + timedelta(seconds=delay)
    if at.microsecond:
        at = at.replace(microsecond=0) + timedelta(seconds=1)
    return at


def enqueue_delivery(
    *, job_id: str, rq_job_id: str, priority: str, provider: str | None = None, delay: float = 0.0
) -> None:
    """Put one delivery of a job on its queue; the RQ job carries ids (and the provider, so the worker
    can take a rate-limit token before it touches the database)."""
    queue = get_queue(queue_name(priority))
    kwargs = {
        "job_id": rq_job_id,
        "job_timeout": int(settings.AI_LEASE_SECONDS) + 30,
        "result_ttl": 600,
        "failure_ttl": 86_400,
        "description": f"ai job {job_id}",
    }
    if delay > 0:
        queue.enqueue_at(_run_at(delay), "jobs.rq_jobs.run_job", job_id, rq_job_id, provider, **kwargs)
    else:
        queue.enqueue("jobs.rq_jobs.run_job", job_id, rq_job_id, provider, **kwargs)
