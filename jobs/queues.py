"""RQ transport: the queues' names, how a delivery is put on a queue or taken off it, their sizes, the pause flag.

Every key name and structure of RQ's that aipb reads or writes is used here or in jobs.redis_state, nowhere
else: the queue lists, the registries, the scheduled set, the suspension flag.

Pause is RQ's suspension flag in Redis (`rq:suspended`, the one `rq suspend` and django-rq's `rqsuspend`
set): every worker on every host checks it before taking a job, so a pause reaches all of them and survives
worker restarts (not a Redis flush). Who paused, when and why live beside it (RQ's flag carries no such thing).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from django.conf import settings
from redis.exceptions import NoScriptError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.rate_limit import RateLimit, RateLimitRegistry
from rq.registry import FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.suspension import is_suspended, resume, suspend

from aipb.redis_client import get_redis

# Workers drain the queues in this order; the names themselves are settings.AI_QUEUES (priority: name).
QUEUE_PRIORITY_ORDER = ("high", "normal", "low")
QUEUE_ORDER = tuple(settings.AI_QUEUES[priority] for priority in QUEUE_PRIORITY_ORDER)
QUEUE_STATUSES = ("waiting", "active", "delayed", "completed", "failed")
PAUSE_INFO_KEY = "aipb:queue:paused"
INTAKE_CLOSED_KEY = "aipb:intake:closed"  # who closed intake, when and why; absent: intake is open
# Submissions read the intake flag through a per-process copy this old at most: a switch takes effect on
# every web worker within a second, and a submission costs no extra Redis round trip.
INTAKE_CACHE_SECONDS = 1.0


def queue_name(priority: str) -> str:
    return settings.AI_QUEUES[priority]


def get_queue(name: str, connection=None) -> Queue:
    return Queue(name, connection=connection or get_redis())


def all_queues() -> list[Queue]:
    return [get_queue(name) for name in QUEUE_ORDER]


def _run_at(delay: float) -> datetime:
    # RQ's scheduled registry keeps whole seconds, rounded down: round up instead, so a
    # provider's Retry-After is never cut short.
    at = datetime.now(UTC) + timedelta(seconds=delay)
    if at.microsecond:
        at = at.replace(microsecond=0) + timedelta(seconds=1)
    return at


# Every delivery's RQ job: kept past the lease (RQ's timeout only backs up ours), its result briefly, a failure a day.
RESULT_TTL = 600
FAILURE_TTL = 86_400


def _job_timeout() -> int:
    return int(settings.AI_LEASE_SECONDS) + 30


def enqueue_delivery(
    *,
    job_id: str,
    rq_job_id: str,
    priority: str,
    provider: str | None = None,
    delay: float = 0.0,
    rate_limit: RateLimit | None = None,
    connection=None,
) -> None:
    """Put one delivery of a job on its queue; the RQ job carries ids (and the provider, so the worker
    can take a rate-limit token before it touches the database). With its owner's rate limit
    (jobs.fairness) it waits outside the queue while the owner has as many deliveries queued or running."""
    if delay <= 0:  # now: the same RQ job as a batch's, through the same one pipeline
        deliveries_enqueue([(job_id, rq_job_id, priority, provider)], rate_limit=rate_limit, connection=connection)
        return
    queue = get_queue(queue_name(priority), connection)
    # One pipeline: RQ otherwise sends the queue's registration and the job as two round trips.
    with queue.connection.pipeline() as pipe:
        queue.enqueue_at(
            _run_at(delay),
            "jobs.rq_jobs.run_job",
            job_id,
            rq_job_id,
            provider,
            pipeline=pipe,
            rate_limit=rate_limit,
            job_id=rq_job_id,
            job_timeout=_job_timeout(),
            result_ttl=RESULT_TTL,
            failure_ttl=FAILURE_TTL,
            description=f"ai job {job_id}",
        )
        pipe.execute()


def deliveries_enqueue(
    deliveries: Iterable[tuple[str, str, str, str]], *, rate_limit: RateLimit | None = None, connection=None
) -> int:
    """Put many first deliveries on their queues, (job id, RQ job id, priority, provider) each, all in one
    pipeline: a batch's thousand jobs cost one round trip, not a thousand. Each is the RQ job enqueue_delivery
    would make (RQ's enqueue_many builds them alike); with their owner's rate limit (jobs.fairness) they wait
    outside the queues and move up as the owner's deliveries end. Returns how many were enqueued."""
    by_queue: dict[str, list] = {}
    for job_id, rq_job_id, priority, provider in deliveries:
        by_queue.setdefault(queue_name(priority), []).append(
            Queue.prepare_data(
                "jobs.rq_jobs.run_job",
                args=(job_id, rq_job_id, provider),
                job_id=rq_job_id,
                timeout=_job_timeout(),
                result_ttl=RESULT_TTL,
                failure_ttl=FAILURE_TTL,
                description=f"ai job {job_id}",
            )
        )
    if not by_queue:
        return 0
    conn = connection or get_redis()
    if rate_limit is not None:
        return _rate_limited_enqueue_many(conn, by_queue, rate_limit)
    with conn.pipeline() as pipe:
        for name, datas in by_queue.items():
            get_queue(name, conn).enqueue_many(datas, pipeline=pipe)
        pipe.execute()
    return sum(map(len, by_queue.values()))


def _rate_limited_enqueue_many(conn, by_queue: dict[str, list], rate_limit: RateLimit) -> int:
    """Each job saved as rate_limited in its owner's waiting set, the free slots filled after each, all in one
    pipeline. RQ's enqueue takes no pipeline for a rate-limited job and enqueue_many no rate limit; its scheduler
    and dependency code enqueue one on a pipeline this way (the job saved as rate_limited, then the promotion)."""
    jobs = []
    with conn.pipeline() as pipe:
        for name, datas in by_queue.items():
            queue = get_queue(name, conn)
            pipe.sadd(queue.redis_queues_keys, queue.key)
            for data in datas:
                job = queue.create_job(
                    data.func,
                    args=data.args,
                    job_id=data.job_id,
                    timeout=data.timeout,
                    result_ttl=data.result_ttl,
                    failure_ttl=data.failure_ttl,
                    description=data.description,
                    rate_limit=rate_limit,
                )
                queue._enqueue_rate_limited_job(job, pipeline=pipe)  # saved waiting, then a promotion each
                jobs.append(job)
        # redis-py asks Redis whether the promotion script is loaded (SCRIPT EXISTS, one more round trip) before
        # every pipeline that runs one; it is, after the first. When it is not (a restarted Redis), the rest of the
        # transaction is applied and the promotion runs again on its own, loading the script.
        pipe.scripts.clear()
        try:
            pipe.execute()
        except NoScriptError:
            RateLimitRegistry.from_job(jobs[0]).acquire_and_enqueue(rate_limit.concurrency)
    return len(jobs)


def deliveries_remove(rq_job_ids: list[str], *, connection=None) -> None:
    """Take deliveries off their queue or registry and delete them, in one pipeline after one read."""
    if not rq_job_ids:
        return
    conn = connection or get_redis()
    with conn.pipeline() as pipe:
        for rq_job in Job.fetch_many(rq_job_ids, connection=conn):
            if rq_job is not None:
                rq_job.delete(pipeline=pipe)
        pipe.execute()


def delivery_delete(rq_job_id: str) -> None:
    """Remove one delivery from Redis (if it is still there, it would find nothing to claim anyway)."""
    try:
        Job.fetch(rq_job_id, connection=get_redis()).delete()
    except NoSuchJobError:
        pass


def deliveries_delete(conn, rq_job_ids: list[str]) -> None:
    """Delete the deliveries' job hashes (already taken out of their list or registry)."""
    if not rq_job_ids:
        return
    with conn.pipeline() as pipe:
        for rq_job in Job.fetch_many(rq_job_ids, connection=conn):
            if rq_job is not None:
                rq_job.delete(pipeline=pipe, remove_from_queue=False)
        pipe.execute()


# --- sizes ---


def queue_sizes(conn, *, now: float | None = None) -> dict[str, dict[str, int]]:
    """Deliveries per status for each AI queue, from RQ's structures in Redis (one round trip).

    active/completed/failed count only registry entries that have not expired (scored after now): an
    entry whose worker died stops counting as active once its heartbeat lapses. A read must not run
    RQ's cleanup itself, as the started registry's moves abandoned jobs.
    """
    now = time.time() if now is None else now
    pipe = conn.pipeline(transaction=False)
    for name in QUEUE_ORDER:
        pipe.llen(Queue.redis_queue_namespace_prefix + name)
        pipe.zcount(StartedJobRegistry.key_template.format(name), f"({now}", "+inf")
        pipe.zcard(ScheduledJobRegistry.key_template.format(name))
        pipe.zcount(FinishedJobRegistry.key_template.format(name), f"({now}", "+inf")
        pipe.zcount(FailedJobRegistry.key_template.format(name), f"({now}", "+inf")
    replies = iter(pipe.execute())
    return {name: {status: int(next(replies)) for status in QUEUE_STATUSES} for name in QUEUE_ORDER}


def sizes_total(per_queue: dict[str, dict[str, int]]) -> dict[str, int]:
    return {status: sum(sizes[status] for sizes in per_queue.values()) for status in QUEUE_STATUSES}


def waiting_ids(name: str) -> list[str]:
    return [str(i) for i in get_queue(name).get_job_ids()]


def registry_key(name: str, status: str) -> str:
    registry = {"delayed": ScheduledJobRegistry, "failed": FailedJobRegistry, "completed": FinishedJobRegistry}
    return registry[status].key_template.format(name)


def registry_ids(name: str, status: str) -> list[str]:
    return [as_text(member) for member in get_redis().zrange(registry_key(name, status), 0, -1)]


def list_key(name: str) -> str:
    return Queue.redis_queue_namespace_prefix + name


def take_out(conn, key: str, rq_job_ids: list[str], *, kind: str) -> list[str]:
    """Remove the ids from a queue list (kind "list") or a registry ("zset"); returns those that were still
    there (a worker or the scheduler may have moved the rest meanwhile, and those are not ours to delete)."""
    with conn.pipeline() as pipe:
        for rq_id in rq_job_ids:
            if kind == "list":
                pipe.lrem(key, 1, rq_id)
            else:
                pipe.zrem(key, rq_id)
        results = pipe.execute()
    return [rq_id for rq_id, n in zip(rq_job_ids, results, strict=True) if n]


def batched(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def as_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --- the pause flag ---


def is_paused(conn=None) -> bool:
    return bool(is_suspended(conn or get_redis()))


def pause_info(conn) -> dict:
    info = _info(conn.get(PAUSE_INFO_KEY))
    return {"paused_by": info.get("by", ""), "paused_at": info.get("at"), "reason": info.get("reason", "")}


def pause_set(conn, *, by: str, at: str, reason: str) -> bool:
    """Raise the flag; returns whether it was down. A second pause keeps the first one's who/when/why."""
    was_paused = is_paused(conn)
    suspend(conn)
    conn.set(PAUSE_INFO_KEY, json.dumps({"by": by, "at": at, "reason": reason}), nx=was_paused)
    return not was_paused


def _info(raw) -> dict:
    try:
        info = json.loads(raw) if raw else {}
    except ValueError:
        info = {}
    return info if isinstance(info, dict) else {}


_intake_seen: tuple[float, dict | None] = (0.0, None)  # (monotonic time read, closed info or None)


def intake_closed_info(through=None, *, fresh: bool = False) -> dict | None:
    """{"by", "at", "reason"} while intake is closed, None while open. Cached per process for
    INTAKE_CACHE_SECONDS unless fresh. `through`: how to reach Redis (aipb.redis_client.best_effort for a
    web request; default the process's client)."""
    global _intake_seen
    now = time.monotonic()
    if not fresh and now - _intake_seen[0] < INTAKE_CACHE_SECONDS:
        return _intake_seen[1]
    raw = through(lambda conn: conn.get(INTAKE_CLOSED_KEY)) if through else get_redis().get(INTAKE_CLOSED_KEY)
    info = _info(raw) if raw is not None else None
    _intake_seen = (now, info)
    return info


def intake_forget() -> None:
    """Drop this process's copy of the intake flag (the next submission reads Redis)."""
    global _intake_seen
    _intake_seen = (0.0, None)


def intake_set(conn, *, closed: bool, by: str = "", at: str = "", reason: str = "") -> bool:
    """Close or open intake; returns whether that changed anything. A second close keeps the first one's info."""
    intake_forget()
    if closed:
        return bool(conn.set(INTAKE_CLOSED_KEY, json.dumps({"by": by, "at": at, "reason": reason}), nx=True))
    return bool(conn.delete(INTAKE_CLOSED_KEY))


def pause_clear(conn) -> bool:
    """Lower the flag; returns whether it was up."""
    with conn.pipeline() as pipe:
        resume(pipe)
        pipe.delete(PAUSE_INFO_KEY)
        return bool(pipe.execute()[0])
