"""Fair sharing between users: who may submit `high`, how many jobs one user may have waiting, and how many of one
user's deliveries may be queued or running at once.

In flight: RQ 3's concurrency-keyed RateLimit (rq/rate_limit.py), one key per user. A delivery over its owner's
cap waits outside the queues, in the key's `rate_limited` sorted set, and RQ promotes the oldest onto its queue
(by priority, as always) when one of the owner's deliveries ends; so a queue never holds more than the cap of one
user's deliveries, and another user's job is never stuck behind a backlog (it waits at most for the deliveries
already admitted). A claim-time lease would have left the backlog in the queues, each delivery taken, refused and
re-scheduled over and over while the light user's job waited behind all of them.

What RQ does not cover, reconcile does (`slots_release_lost`): a slot is held by an admitted delivery until its
worker ends it, so a SIGKILLed worker's slot (its delivery started, heartbeat stale) or one of a delivery lost
after its pop is released as soon as jobs.redis_state.DeliveryView judges the delivery lost, not only at RQ's
own maintenance (every 10 minutes, in a worker). A Redis flush drops the slots with the queues; reconcile
re-delivers every waiting row, each through its owner's limit again.

The RateLimit's Redis structures (rq:rl:*) are RQ's; this module and jobs.redis_state read them.
"""

from __future__ import annotations

import threading
import time
import uuid
from functools import cache

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from rq.rate_limit import RateLimit, RateLimitRegistry

from aipb.exceptions import Forbidden, TooManyQueued
from jobs.models import WAITING_STATUSES, AIJob, JobStatus, Priority

HIGH_PRIORITY_PERMISSION = "jobs.submit_high_priority"
KEY_PREFIX = "aipb-user-"  # RQ rate-limit keys of ours: one per user id
# The overrides name users and groups; who they are is read from Postgres at most this often per process.
OVERRIDES_REFRESH_SECONDS = 60.0


def priority_check(*, owner: AbstractBaseUser, priority: str) -> None:
    """`high` jumps every queue, so it is a privilege: staff, or the jobs.submit_high_priority permission."""
    if priority != Priority.HIGH or owner.is_staff or owner.has_perm(HIGH_PRIORITY_PERMISSION):
        return
    raise Forbidden(
        f"priority 'high' requires staff or the {HIGH_PRIORITY_PERMISSION} permission",
        details={"priority": priority, "permission": HIGH_PRIORITY_PERMISSION},
    )


def queued_check(*, owner: AbstractBaseUser, adding: int = 1) -> None:
    """Refuse `adding` new jobs (one, or a batch's) when the owner would have more than AI_USER_MAX_QUEUED waiting:
    one COUNT over the partial index of waiting jobs (aijob_owner_waiting), bounded by LIMIT, so it costs the same
    for a user with a million finished jobs. Two submissions racing at the cap may both pass: the cap bounds a
    backlog, not exactly. A single job's submission runs the same count inside its INSERT (jobs.admission)."""
    cap = settings.AI_USER_MAX_QUEUED
    if cap <= 0:
        return
    with connection.cursor() as cursor:
        cursor.execute(waiting_count_sql(), {"owner": owner.pk, "cap": cap})
        (waiting,) = cursor.fetchone()
    queued_enforce(waiting=waiting, adding=adding)


@cache
def waiting_count_sql() -> str:
    """One row, one column ``waiting``: the jobs of user ``%(owner)s`` that wait, counted up to ``%(cap)s`` (a
    whole number, 0 or more)."""
    qn = connection.ops.quote_name
    meta = AIJob._meta
    statuses = ", ".join(f"'{status}'" for status in WAITING_STATUSES)  # the partial index's own list, in order
    return (
        f"SELECT COUNT(*) AS waiting FROM (SELECT 1 FROM {qn(meta.db_table)} "
        f"WHERE {qn(meta.get_field('owner').column)} = %(owner)s AND {qn(meta.get_field('status').column)} "
        f"IN ({statuses}) LIMIT %(cap)s) AS waiting_jobs"
    )


def queued_enforce(*, waiting: int, adding: int = 1) -> None:
    """TooManyQueued when `adding` jobs on top of the owner's `waiting` ones would pass AI_USER_MAX_QUEUED."""
    cap = settings.AI_USER_MAX_QUEUED
    if cap <= 0 or waiting + adding <= cap:
        return
    what = "a job" if adding == 1 else f"{adding} jobs"
    raise TooManyQueued(
        f"you have {waiting} jobs waiting and may have at most {cap}: {what} more would pass it; "
        "submit once some have started",
        details={"limit": cap, "waiting": waiting, "adding": adding},
    )


_overrides_lock = threading.Lock()
_overrides_seen: tuple[float, dict[int, int]] | None = None


def _override_caps() -> dict[int, int]:
    """user id → cap, from AI_USER_MAX_IN_FLIGHT_OVERRIDES: a user's own entry wins, else the largest of their
    groups' entries."""
    global _overrides_seen
    seen = _overrides_seen
    if seen is not None and time.monotonic() - seen[0] < OVERRIDES_REFRESH_SECONDS:
        return seen[1]
    with _overrides_lock:
        overrides = settings.AI_USER_MAX_IN_FLIGHT_OVERRIDES
        user_model = get_user_model()
        caps: dict[int, int] = {}
        if overrides["group"]:
            members = user_model.groups.through.objects.filter(group__name__in=overrides["group"])
            for user_id, group in members.values_list("user_id", "group__name"):
                caps[user_id] = max(caps.get(user_id, 0), overrides["group"][group])
        if overrides["user"]:
            lookup = {f"{user_model.USERNAME_FIELD}__in": overrides["user"]}
            for user_id, name in user_model.objects.filter(**lookup).values_list("pk", user_model.USERNAME_FIELD):
                caps[user_id] = overrides["user"][name]
        _overrides_seen = (time.monotonic(), caps)
        return caps


def overrides_forget() -> None:
    """Read the overrides' users and groups again at the next delivery (tests; after a change of membership)."""
    global _overrides_seen
    _overrides_seen = None


def in_flight_cap(owner_id: int) -> int:
    """How many of this user's deliveries may be queued or running at once; 0: no cap."""
    overrides = settings.AI_USER_MAX_IN_FLIGHT_OVERRIDES
    if not overrides["user"] and not overrides["group"]:
        return settings.AI_USER_MAX_IN_FLIGHT
    return _override_caps().get(owner_id, settings.AI_USER_MAX_IN_FLIGHT)


def rate_limit_for(owner_id: int | None) -> RateLimit | None:
    """The RQ rate limit a delivery of this user's job is enqueued with (None: no cap, straight onto its queue)."""
    if owner_id is None:
        return None
    cap = in_flight_cap(owner_id)
    return RateLimit(key=f"{KEY_PREFIX}{owner_id}", concurrency=cap) if cap > 0 else None


def slots_release_lost(conn, view) -> list[str]:
    """Release the slots of admitted deliveries that will never end on their own, then let RQ fill free slots
    and drop empty keys. A delivery is done with its slot when Redis says it will never run or end (`view`:
    reconcile's jobs.redis_state.DeliveryView; lost after its pop, or started by a worker that stopped
    heart-beating minutes ago) or when Postgres says its job no longer waits on it or runs it (lease recovery
    gave the job a new delivery after its worker was killed; canceled; deleted; final) — the second finds a
    killed worker's slot one lease after the kill, not only once its heartbeat is stale.
    Returns the deliveries released."""
    registries = [registry for registry in RateLimitRegistry.all(conn) if registry.key.startswith(KEY_PREFIX)]
    admitted = {registry.key: registry.get_allowed_job_ids() for registry in registries}
    current = _current_deliveries([rq_job_id for ids in admitted.values() for rq_job_id in ids])
    released = []
    for registry in registries:
        ids = admitted[registry.key]
        kept = [rq_job_id for rq_job_id in ids if rq_job_id in current]
        alive = view.alive(kept) if kept else set()
        for rq_job_id in ids:
            if rq_job_id not in alive:
                registry.release_and_enqueue(rq_job_id)
                released.append(rq_job_id)
        registry.cleanup()
    return released


def _current_deliveries(rq_job_ids: list[str]) -> set[str]:
    """Those of the deliveries that their job, waiting or running, is still carried by (AIJob.rq_job_id)."""
    job_ids = set()
    for rq_job_id in rq_job_ids:
        try:
            job_ids.add(uuid.UUID(rq_job_id.split("_", 1)[0]))
        except ValueError:  # not a delivery of ours: nothing carries it
            continue
    if not job_ids:
        return set()
    rows = AIJob.objects.filter(id__in=job_ids, status__in=(*WAITING_STATUSES, JobStatus.RUNNING))
    carried = set(rows.values_list("rq_job_id", flat=True))
    return {rq_job_id for rq_job_id in rq_job_ids if rq_job_id in carried}


def held_deliveries(conn) -> list[tuple[str, list[str]]]:
    """(the sorted set, the ids) of every user's deliveries held back by their cap, for `queue clear`."""
    out = []
    for registry in RateLimitRegistry.all(conn):
        if registry.key.startswith(KEY_PREFIX) and (ids := registry.get_rate_limited_job_ids()):
            out.append((registry.rate_limited_key, ids))
    return out


def slots_held(conn, owner_id: int) -> dict[str, int]:
    """One user's deliveries admitted (queued or running) and held back, for the fairness tests and operators."""
    registry = RateLimitRegistry(key=f"{KEY_PREFIX}{owner_id}", connection=conn)
    return {"admitted": registry.get_allowed_job_count(), "held": registry.get_rate_limited_job_count()}
