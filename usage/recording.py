"""Usage is durable before state: every provider call that returned usage is billed exactly once.

The pipeline records a call's usage in its own short transaction as soon as the provider has answered, before
the transaction that moves the job: if that one then fails (Postgres restarting mid-attempt), the call is
billed all the same, and its retry is billed as the separate call it is. One row per (job, attempt), by a
unique constraint, so recording again (a replay) adds nothing.

The same statement adds the call's cost to the month-to-date spend of its owner and of each group the owner is in
(usage.models.MonthlySpend, what budgets are checked against), and only if it inserted the row: a replay adds
nothing to the spend either, and the spend cannot disagree with the rows.

If Postgres cannot take the row at all, it goes to a spool in Redis (a list of JSON records) and
`usage_spool_replay` — run by every `reconcile` — writes it once Postgres is back, exactly once: the row is
inserted ignoring a conflict on (job, attempt), and the record leaves the spool only after that commit.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from datetime import UTC, date, datetime
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.db import connection, connections, router
from django.utils.dateparse import parse_datetime

from aipb import prepared
from aipb.exceptions import DATABASE_UNAVAILABLE
from aipb.redis_client import get_redis
from aipb.rows import typed_placeholder
from jobs.catalogue import canonical_model
from jobs.models import AIJob
from jobs.providers.base import Usage
from usage.models import MonthlySpend, TokenUsage
from usage.pricing import PriceSeen, cost_of, price_in_force, price_in_force_sql, price_params, price_seen

log = logging.getLogger(__name__)

SPOOL_KEY = "aipb:usage:spool"
REPLAY_BATCH = 500


@dataclasses.dataclass(frozen=True)
class Recorded:
    cost: Decimal | None
    spooled: bool  # Postgres could not take it: it waits in Redis for usage_spool_replay


def _row(
    *, job_id, owner_id: int, attempt: int, provider: str, model: str, usage: Usage, at: datetime, price
) -> TokenUsage:
    """The call's row, its cost fixed now from ``price``, the price in force at the call as the caller read it (None:
    unpriced), never repriced."""
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


def month_of(at: datetime) -> date:
    """The UTC month a call's cost counts in (MonthlySpend.month)."""
    at = at.astimezone(UTC)
    return date(at.year, at.month, 1)


_USAGE_COLUMNS = (
    "owner_id",
    "job_id",
    "attempt",
    "provider",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cache_write_tokens",
    "cost",
    "created_at",
)


@functools.cache  # constant once the apps are loaded; built on first use, not per attempt
def _add_to_spend_sql() -> str:
    """The tail of both statements below (its parameter: ``month``): ``source`` (owner_id, cost) adds its cost to
    the owner's row and to each of the owner's groups' rows of the month. Rows are locked in one order (the user's,
    then the groups' by id), so two calls sharing a group never deadlock."""
    spend = MonthlySpend._meta.db_table
    memberships = get_user_model().groups.through._meta.db_table
    return f"""
        INSERT INTO {spend} AS spend (user_id, group_id, month, spent_usd)
        SELECT scope.user_id, scope.group_id, %(month)s, source.cost
        FROM source CROSS JOIN LATERAL (
            SELECT source.owner_id AS user_id, NULL::integer AS group_id
            UNION ALL
            SELECT NULL, member.group_id FROM {memberships} member WHERE member.user_id = source.owner_id
        ) AS scope
        WHERE source.cost > 0
        ORDER BY scope.group_id NULLS FIRST
        ON CONFLICT (user_id, group_id, month) DO UPDATE SET spent_usd = spend.spent_usd + EXCLUDED.spent_usd
    """


# The price each (provider, canonical model) last had in force here, as usage rows were written with it: the
# row's INSERT checks it still is (``_insert``), so using it costs no statement and can never bill a stale price.
_prices: dict[tuple[str, str], PriceSeen] = {}
PRICE_READS = 3  # a price changing under every INSERT that tries it: give up after this many reads


@functools.cache
def _insert_sql() -> str:
    """One statement: the price in force at the call (``usage.pricing.price_in_force_sql``), the row only if that
    is the price its cost was computed with (same row, same version), and the spend only of a row inserted. It
    answers the price it found, so a mismatch (nothing written) is read again."""
    connection_ = connections[router.db_for_write(TokenUsage)]
    fields = {f.column: f for f in TokenUsage._meta.concrete_fields}
    values = ", ".join(typed_placeholder(fields[column], connection_, f"%(u_{column})s") for column in _USAGE_COLUMNS)
    return f"""
        WITH price AS ({price_in_force_sql()}),
        source AS (
            INSERT INTO {TokenUsage._meta.db_table} ({", ".join(_USAGE_COLUMNS)})
            SELECT {values}
            WHERE (SELECT id FROM price) IS NOT DISTINCT FROM CAST(%(seen_id)s AS bigint)
              AND (SELECT version FROM price) IS NOT DISTINCT FROM CAST(%(seen_version)s AS text)
            ON CONFLICT DO NOTHING
            RETURNING owner_id, cost
        ),
        spent AS ({_add_to_spend_sql()})
        SELECT (SELECT id FROM price), (SELECT version FROM price)
    """


def _insert(**fields) -> Decimal | None:
    """The row and its spend in one statement (its own transaction in autocommit): ON CONFLICT DO NOTHING, and
    the spend takes only what the INSERT returned, so a replay adds neither a row nor a cent. The cost is computed
    with the price this process last saw in force for the model; the statement writes nothing if that is no longer
    the price in force at the call, and the price is then read again (a first call reads it first)."""
    key = (fields["provider"], canonical_model(fields["provider"], fields["model"]))
    seen = _prices.get(key)
    for _ in range(PRICE_READS):
        if seen is None:
            seen = _prices[key] = price_seen(provider=fields["provider"], model=fields["model"], at=fields["at"])
        row = _row(**fields, price=seen.price)
        params = {f"u_{column}": getattr(row, column) for column in _USAGE_COLUMNS}
        params.update(price_params(provider=row.provider, model=row.model, at=row.created_at))
        params.update(
            seen_id=None if seen.price is None else seen.price.pk,
            seen_version=seen.version,
            month=month_of(at=row.created_at),
        )
        with prepared.cursor() as cursor:
            cursor.execute(_insert_sql(), params)
            found = cursor.fetchone()
        if tuple(found) == (params["seen_id"], seen.version):
            return row.cost
        seen = None  # the price changed since this process saw it: read it again
    raise RuntimeError(f"the price of {key} changed under each of {PRICE_READS} tries to record a call's usage")


def _add_to_spend(row: TokenUsage) -> None:
    sql = "WITH source AS (SELECT %(owner)s::integer AS owner_id, %(cost)s::numeric AS cost)" + _add_to_spend_sql()
    with connection.cursor() as cursor:
        cursor.execute(sql, {"owner": row.owner_id, "cost": row.cost, "month": month_of(row.created_at)})


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
        price=price_in_force(provider=job.provider, model=job.model, at=at),
    )
    row.save(force_insert=True)
    _add_to_spend(row)
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
