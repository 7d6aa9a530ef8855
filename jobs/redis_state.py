"""What Redis says about work in flight: the workers on the AI queues, and whether a delivery will still run.

The other half of aipb's RQ knowledge (jobs.queues has the transport); collectors, queue status and reconcile
call these instead of reading RQ's keys themselves.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from django.conf import settings
from rq.job import Job
from rq.job import JobStatus as RQStatus
from rq.queue import Queue
from rq.rate_limit import RateLimitRegistry
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.utils import utcparse
from rq.worker import Worker
from rq.worker_registration import REDIS_WORKER_KEYS, WORKERS_BY_QUEUE_KEY

from jobs.queues import QUEUE_ORDER, as_text

WORKER_STATES = ("idle", "busy", "suspended")
# RQ's worker hash `state` → ours: a live worker that is neither busy nor suspended can take a job
# ("started" and "?" are a worker between registering and its first dequeue).
_RQ_WORKER_STATE = {"busy": "busy", "suspended": "suspended"}

# A started delivery whose worker stopped heart-beating this long ago is dead (RQ beats at least every
# job_monitoring_interval, 30 s by default; RQ's own cleanup only runs in a worker's maintenance, every 10 min).
STALE_HEARTBEAT_SECONDS = 180


def _beat_age(raw, now: datetime) -> float | None:
    try:
        return (now - utcparse(as_text(raw)).replace(tzinfo=UTC)).total_seconds()
    except (TypeError, ValueError):
        return None


def _registered(conn) -> list[str]:
    return sorted(as_text(key) for key in conn.sunion([WORKERS_BY_QUEUE_KEY % name for name in QUEUE_ORDER]))


def _alive(state, beat, now: datetime) -> bool:
    """A worker is alive while its hash exists (it expires a while after the last heartbeat) and its last
    heartbeat is younger than AI_WORKER_GONE_SECONDS: a SIGKILLed worker leaves both behind, and RQ would
    list it for its whole TTL (7-8 minutes)."""
    if state is None:
        return False
    age = _beat_age(beat, now)
    return age is None or age <= settings.AI_WORKER_GONE_SECONDS


def worker_states(conn) -> dict[str, int]:
    """Live RQ workers listening on any AI queue, by state (two round trips, O(workers))."""
    keys = _registered(conn)
    states = dict.fromkeys(WORKER_STATES, 0)
    if not keys:
        return states
    pipe = conn.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(key, "state", "last_heartbeat")
    now = datetime.now(UTC)
    for state, beat in pipe.execute():
        if _alive(state, beat, now):
            states[_RQ_WORKER_STATE.get(as_text(state), "idle")] += 1
    return states


def worker_slots(conn) -> dict[str, int]:
    """In-flight capacity of the live workers: a threaded worker reports its slots and how many are busy
    (jobs.threaded_worker); any other worker is one slot, busy while its state is."""
    keys = _registered(conn)
    slots = {"busy": 0, "idle": 0}
    if not keys:
        return slots
    pipe = conn.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(key, "state", "last_heartbeat", "aipb_slots", "aipb_busy")
    now = datetime.now(UTC)
    for state, beat, total, busy in pipe.execute():
        if not _alive(state, beat, now):
            continue
        if total is not None:
            total, busy = int(total), min(int(busy or 0), int(total))
        else:
            total, busy = 1, int(as_text(state) == "busy")
        slots["busy"] += busy
        slots["idle"] += total - busy
    return slots


def workers_forget_gone(conn) -> list[str]:
    """Unregister the workers that stopped heart-beating (killed, or their host died): they leave RQ's sets
    and their hash is deleted. A worker that was only slow registers itself again at its next heartbeat
    (jobs.worker.ResilienceMixin). Returns the keys forgotten."""
    keys = _registered(conn)
    if not keys:
        return []
    pipe = conn.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(key, "state", "last_heartbeat")
    now = datetime.now(UTC)
    gone = [key for key, (state, beat) in zip(keys, pipe.execute(), strict=True) if not _alive(state, beat, now)]
    if gone:
        with conn.pipeline() as pipe:
            pipe.srem(REDIS_WORKER_KEYS, *gone)
            for name in QUEUE_ORDER:
                pipe.srem(WORKERS_BY_QUEUE_KEY % name, *gone)
            pipe.delete(*gone)
            pipe.execute()
    return gone


def workers_list(conn) -> list[dict]:
    """Every live worker listening on an AI queue, for queue status and the operations page."""
    out = []
    now = datetime.now(UTC)
    for worker in Worker.all(connection=conn):
        queue_names = worker.queue_names()
        if not set(queue_names) & set(QUEUE_ORDER):
            continue
        if worker.last_heartbeat and (now - worker.last_heartbeat).total_seconds() > settings.AI_WORKER_GONE_SECONDS:
            continue
        out.append(
            {
                "name": worker.name,
                "hostname": worker.hostname or "",
                "pid": worker.pid,
                "state": worker.get_state(),
                "queues": queue_names,
                "current_job": worker.get_current_job_id() or None,
                "successful_jobs": worker.successful_job_count,
                "failed_jobs": worker.failed_job_count,
                "last_heartbeat": worker.last_heartbeat.isoformat() if worker.last_heartbeat else None,
            }
        )
    return sorted(out, key=lambda w: (w["hostname"], w["name"]))


class DeliveryView:
    """Which RQ deliveries will still run, judged from where they are in Redis, not just their status.

    A status alone can lie after a crash: a worker SIGKILLed right after BLPOP leaves a job "queued" in no
    queue (nothing will ever pop it); a scheduled delivery waits forever when the worker holding RQ's
    scheduler lock died (a new scheduler takes the lock over only in a worker's maintenance); a "started"
    one whose worker died stays started until RQ's own cleanup, also in that maintenance. Calling such a
    delivery lost is safe: the job gets a new delivery id, and the old one, should it run after all,
    claims nothing. Each queue's list is read once per reconcile run (as many ids as jobs wait, like
    the database query that found them).
    """

    # A worker's BLPOP takes a delivery off its list a moment before the worker registers it as started:
    # a "queued" delivery found in neither place is looked at once more this much later before it counts
    # as lost (found by the load test, where reconcile runs over a long backlog while workers pop it).
    RECHECK_SECONDS = 1.0

    def __init__(self, conn, *, now: datetime, grace_seconds: float) -> None:
        self.conn = conn
        self.now = now.timestamp()
        self.grace = grace_seconds
        self._listed: dict[str, set[str]] = {}  # queue name: ids in its list, read once per run

    def _in_list(self, origin: str) -> set[str]:
        if origin not in self._listed:
            key, ids, start, step = Queue.redis_queue_namespace_prefix + origin, set(), 0, 10_000
            while True:
                chunk = self.conn.lrange(key, start, start + step - 1)
                ids.update(as_text(item) for item in chunk)
                if len(chunk) < step:
                    break
                start += step
            self._listed[origin] = ids
        return self._listed[origin]

    def _started(self, origin: str) -> set[str]:
        members = self.conn.zrange(StartedJobRegistry.key_template.format(origin), 0, -1)
        return {as_text(member).split(":", 1)[0] for member in members}  # "<job id>:<execution id>"

    def alive(self, rq_job_ids: list[str]) -> set[str]:
        found, suspects = self._judge(rq_job_ids, recheck=False)
        if suspects:
            time.sleep(self.RECHECK_SECONDS)
            found |= self._judge(suspects, recheck=True)[0]
        return found

    def _judge(self, rq_job_ids: list[str], *, recheck: bool) -> tuple[set[str], list[str]]:
        found, scheduled, suspects, held = set(), [], [], []
        started: dict[str, set[str]] = {}
        for rq_job in Job.fetch_many(rq_job_ids, connection=self.conn):
            status = rq_job.get_status(refresh=False) if rq_job is not None else None
            if status == RQStatus.QUEUED:
                origin = rq_job.origin
                if origin not in started:
                    started[origin] = self._started(origin)
                listed = (
                    self.conn.lpos(Queue.redis_queue_namespace_prefix + origin, rq_job.id) is not None
                    if recheck
                    else rq_job.id in self._in_list(origin)
                )
                if listed or rq_job.id in started[origin]:
                    found.add(rq_job.id)
                else:
                    suspects.append(rq_job.id)
            elif status == RQStatus.SCHEDULED:
                scheduled.append(rq_job)
            elif status == RQStatus.STARTED:
                beat = rq_job.last_heartbeat or rq_job.started_at
                if beat is None or beat.timestamp() > self.now - STALE_HEARTBEAT_SECONDS:
                    found.add(rq_job.id)
            elif status == RQStatus.DEFERRED:
                found.add(rq_job.id)
            elif status == RQStatus.RATE_LIMITED:
                held.append(rq_job)
        if scheduled:
            pipe = self.conn.pipeline(transaction=False)
            for rq_job in scheduled:
                pipe.zscore(ScheduledJobRegistry.key_template.format(rq_job.origin), rq_job.id)
            for rq_job, run_at in zip(scheduled, pipe.execute(), strict=True):
                if run_at is not None and float(run_at) > self.now - self.grace:  # not overdue: a scheduler moves it
                    found.add(rq_job.id)
        if held:  # over its owner's fair share (jobs.fairness): alive while RQ's rate limit still holds it
            pipe = self.conn.pipeline(transaction=False)
            for rq_job in held:
                pipe.zscore(RateLimitRegistry.from_job(rq_job).rate_limited_key, rq_job.id)
            for rq_job, score in zip(held, pipe.execute(), strict=True):
                if score is not None:
                    found.add(rq_job.id)
        return found, suspects
