"""Admission: a new job's row written by one statement that first reads what could refuse it.

A submission used to be four statements after the token's: the Idempotency-Key's row, the owner's waiting jobs
(jobs.fairness, AI_USER_MAX_QUEUED), the owner's limits and spend (usage.budgets), the INSERT. Here they are one
``INSERT ... SELECT ... WHERE <no row has the key> AND <under the cap> AND <no limit reached>`` whose common table
expressions are those same reads, run in one snapshot, in autocommit one transaction and one round trip,
prepared once per connection (aipb.prepared: planning it cost more than running it). The
statement answers what it read, so a refusal is raised here with the payload the separate checks raise
(``fairness.queued_enforce``, ``budgets.budget_enforce``), in their order, with nothing written; and a repeated
key answers its row. Two submissions with one key that race both pass the read: the unique (owner, key)
constraint fails the second INSERT (IntegrityError, for the caller), as it did before.

An attempt is admitted the same way (``attempt_claim``): the claim's UPDATE and its owner's limits and spend in
one statement, so the pipeline's budget check before the provider call costs no statement of its own."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from django.conf import settings
from django.db import connections

from aipb import prepared
from aipb.rows import ModelRows
from jobs import fairness, transitions
from jobs.models import AIJob
from usage import budgets
from usage.recording import month_of

_rows = ModelRows(AIJob)
_FIXED = 2  # the answer's columns before the limit's: inserted, waiting
_LIMIT = 5  # a limit's: scope, name, limit_usd, soft_percent, spent_usd (budgets.limits_sql)


@dataclass(frozen=True)
class Admission:
    """What the statement did and read: ``existing`` is the row a repeated Idempotency-Key made (nothing was
    inserted then)."""

    inserted: bool
    existing: AIJob | None


@cache
def _sql() -> str:
    connection = connections[_rows.db]
    qn = connection.ops.quote_name
    meta = AIJob._meta
    table = qn(meta.db_table)
    owner, key = qn(meta.get_field("owner").column), qn(meta.get_field("idempotency_key").column)
    return f"""
        WITH existing AS (
            SELECT {_rows.columns()} FROM {table} WHERE {owner} = %(owner)s AND {key} = %(key)s
        ), backlog AS (
            {fairness.waiting_count_sql()}
        ), limits AS (
            {budgets.limits_sql()}
        ), inserted AS (
            INSERT INTO {table} ({_rows.columns()})
            SELECT {_rows.placeholders("v")}
            WHERE NOT EXISTS (SELECT 1 FROM existing)
              AND (%(cap)s = 0 OR (SELECT waiting FROM backlog) + 1 <= %(cap)s)
              AND NOT {budgets.limit_reached_sql("limits")}
            RETURNING 1
        )
        SELECT (SELECT COUNT(*) FROM inserted), (SELECT waiting FROM backlog),
               l.scope, l.name, l.limit_usd, l.soft_percent, l.spent_usd, {_rows.columns("e")}
        FROM (SELECT 1) AS answer
        LEFT JOIN limits AS l ON TRUE
        LEFT JOIN existing AS e ON TRUE
        ORDER BY {budgets.limits_order("l")}
    """


def job_admit(job: AIJob) -> Admission:
    """Insert ``job`` (an unsaved row, jobs.submission.job_build's) unless its Idempotency-Key has a row already;
    raise TooManyQueued or BudgetExceeded, with nothing written, when its owner may not add it."""
    cap = max(settings.AI_USER_MAX_QUEUED, 0)
    limits = budgets.limits_params(user_id=job.owner_id)
    params = {
        **limits,
        "owner": job.owner_id,
        "key": job.idempotency_key,  # None: matches no row
        "cap": cap,
        **_rows.insert_params(job, "v"),
    }
    with prepared.cursor(_rows.db) as cursor:
        cursor.execute(_sql(), params)
        rows = cursor.fetchall()
    inserted, waiting = rows[0][:_FIXED]
    if inserted:
        _rows.inserted(job)
        return Admission(inserted=True, existing=None)
    if rows[0][_FIXED + _LIMIT] is not None:  # the existing row's id
        return Admission(inserted=False, existing=_rows.from_row(rows[0][_FIXED + _LIMIT :]))
    fairness.queued_enforce(waiting=waiting)
    found = [row[_FIXED : _FIXED + _LIMIT] for row in rows if row[_FIXED] is not None]
    budgets.budget_enforce(budgets.limits_read(found, month=limits["month"]), stage="submit")
    # the statement's conditions are the checks above: one of them refused
    raise RuntimeError(f"job {job.id} was refused by no check ({waiting} waiting, limits {found})")


@dataclass(frozen=True)
class Claim:
    """A claimed job and the limits that hold its owner this month, read as it was claimed (``budgets.budget_enforce``
    judges them before the provider call)."""

    job: AIJob
    limits: list[budgets.Limit]


@cache
def _claim_sql() -> str:
    owner = connections[_rows.db].ops.quote_name(AIJob._meta.get_field("owner").column)
    return f"""
        WITH claimed AS (
            {transitions.claim_sql()}
        ), limits AS (
            {budgets.limits_sql(user=f"(SELECT {owner} FROM claimed)")}
        )
        SELECT claimed.*, l.scope, l.name, l.limit_usd, l.soft_percent, l.spent_usd
        FROM claimed
        LEFT JOIN limits AS l ON TRUE
        ORDER BY {budgets.limits_order("l")}
    """


def attempt_claim(*, job_id: str, rq_job_id: str) -> Claim | None:
    """``transitions.job_claim`` (queued|retrying → running for this delivery only; None when a stale or duplicate
    delivery claims nothing), with the owner's limits read in the same statement."""
    params = transitions.claim_params(job_id=job_id, rq_job_id=rq_job_id)
    params["month"] = month_of(params["now"])  # the month of limits_sql's spend; its user is the claimed row's owner
    with prepared.cursor(_rows.db) as cursor:
        cursor.execute(_claim_sql(), params)
        rows = cursor.fetchall()
    if not rows:
        return None
    first = transitions.CLAIM_COLUMNS
    found = [row[first : first + _LIMIT] for row in rows if row[first] is not None]
    return Claim(job=transitions.claimed_job(rows[0]), limits=budgets.limits_read(found, month=params["month"]))
