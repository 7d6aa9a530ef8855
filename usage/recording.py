"""Usage is durable before state: every provider call that returned usage is billed exactly once.

The pipeline records a call's usage in its own short transaction as soon as the provider has answered, before
the transaction that moves the job: if that one then fails (Postgres restarting mid-attempt), the call is
billed all the same, and its retry is billed as the separate call it is. One row per (job, attempt), by a
unique constraint, so recording again (a replay) adds nothing.

If Postgres cannot take the row at all, it goes to a spool in Redis (a list of JSON records) and
`usage_spool_replay` — run by every `reconcile` — writes it once Postgres is back, exactly once: the row is
inserted ignoring a conflict on (job, attempt), and the record leaves the spool only after that commit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.utils.dateparse import parse_datetime

from aipb.exceptions import DATABASE_UNAVAILABLE
from aipb.redis_client import get_redis
from jobs.catalogue import canonical_model
from jobs.models import AIJob
from jobs.providers.base import Usage
from usage.models import TokenUsage
from usage.pricing import cost_of, price_in_force

log = logging.getLogger(__name__)

SPOOL_KEY = "aipb:usage:spool"
REPLAY_BATCH = 500


@dataclasses.dataclass(frozen=True)
class Recorded:
    cost: Decimal | None
    spooled: bool  # Postgres could not take it: it waits in Redis for usage_spool_replay


def _row(*, job_id, owner_id: int, attempt: int, provider: str, model: str, usage: Usage, at: datetime) -> TokenUsage:
    """The call's row, its cost fixed now from the price in force at the call (never repriced)."""
    price = price_in_force(provider=provider, model=model, at=at)
    cost = cost_of(usage=usage, price=price)
    return TokenUsage(
        owner_id=owner_id,
        job_id=job_id,
        attempt=attempt,
        provider=provider,
        model=canonical_model(provider, model),
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cost=cost,
        created_at=at,
    )


def _insert(**fields) -> Decimal | None:
    row = _row(**fields)
    TokenUsage.objects.bulk_create([row], ignore_conflicts=True)  # ON CONFLICT DO NOTHING: a replay adds nothing
    return row.cost


def usage_record(*, job: AIJob, attempt: int, usage: Usage, at: datetime) -> TokenUsage:
    """One call's row, inside the caller's transaction (tests and tools that build the books by hand; the
    pipeline uses usage_record_durable)."""
    row = _row(
        job_id=job.id,
        owner_id=job.owner_id,
        attempt=attempt,
        provider=job.provider,
        model=job.model,
        usage=usage,
        at=at,
    )
    row.save(force_insert=True)
    return row


def usage_record_durable(
    *, job: AIJob, attempt: int, usage: Usage, at: datetime, provider: str | None = None, model: str | None = None
) -> Recorded:
    """The call's usage in its own transaction (committed when this returns), or in the spool. Billed to the target
    that served the call (``provider``/``model``: a fallback of the job's), else the job's own."""
    fields = {
        "job_id": job.id,
        "owner_id": job.owner_id,
        "attempt": attempt,
        "provider": provider or job.provider,
        "model": model or job.model,
        "usage": usage,
        "at": at,
    }
    try:
        with transaction.atomic():
            return Recorded(cost=_insert(**fields), spooled=False)
    except DATABASE_UNAVAILABLE as exc:
        record = {**fields, "job_id": str(job.id), "usage": dataclasses.asdict(usage), "at": at.isoformat()}
        get_redis().rpush(SPOOL_KEY, json.dumps(record))
        log.warning("usage of job %s attempt %s spooled to Redis: Postgres unavailable (%s)", job.id, attempt, exc)
        return Recorded(cost=None, spooled=True)


def usage_spool_replay(*, limit: int = REPLAY_BATCH) -> int:
    """Write spooled usage rows to Postgres, each exactly once; returns how many records left the spool."""
    conn = get_redis()
    raw_records = conn.lrange(SPOOL_KEY, 0, limit - 1)
    done = 0
    for raw in raw_records:
        record = json.loads(raw)
        job_id = record["job_id"] if AIJob.objects.filter(id=record["job_id"]).exists() else None  # deleted since
        with transaction.atomic():
            _insert(
                job_id=job_id,
                owner_id=record["owner_id"],
                attempt=record["attempt"],
                provider=record["provider"],
                model=record["model"],
                usage=Usage(**record["usage"]),
                at=parse_datetime(record["at"]),
            )
        conn.lrem(SPOOL_KEY, 1, raw)  # after the commit: a crash in between replays it, and the insert ignores it
        done += 1
    if done:
        log.warning("replayed %d spooled usage records into Postgres", done)
    return done
