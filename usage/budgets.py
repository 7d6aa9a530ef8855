"""Budgets: monthly spend limits in USD per user, per group (a team) and by default, checked before any spend.

Limits apply per UTC calendar month, against the month-to-date spend that usage.recording keeps exactly in
MonthlySpend (no scan of TokenUsage). A user is held to

- their own limit (a Budget row), or else the default (AI_BUDGET_DEFAULT_MONTHLY_USD; unset = none), and
- the limit of every group they are in that has one, shared with the group's other members.

A limit is reached when the spend is at or over it. Submission then refuses new jobs (429 budget_exceeded) and
the pipeline ends a waiting job BUDGET_EXCEEDED before its provider call; the calls already in flight when the
limit is crossed still complete and are billed, so the spend can pass a limit by what those calls cost.

One SQL statement reads a user's limits and spend (``budget_limits``, ``limits_sql``), so a check costs one round
trip; a job's submission and an attempt's claim read them inside their own statement (jobs.admission) and cost none.
Changes (``budget_set``, ``budget_clear``) are recorded in the audit trail.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import cache

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection, transaction
from django.utils import timezone

from aipb import prepared
from aipb.exceptions import InvalidInput, NotFound
from audit.models import AuditAction
from audit.records import Actor, audit_record
from jobs.errors import BudgetExceeded
from monitoring import metrics
from usage.models import Budget, MonthlySpend
from usage.recording import month_of

USD_PLACES = 6  # Budget.monthly_usd
USD_MAX = Decimal("999999999.999999")  # DECIMAL(15, 6)
WATCH_TOP = 10  # budgets named in ai_budget_spent_ratio: the most used ones, so the labels stay bounded


class Scope:
    USER = "user"
    GROUP = "group"
    DEFAULT = "default"
    ALL = (USER, GROUP, DEFAULT)


def resets_at(month: date) -> datetime:
    """When a month's spend stops counting: midnight UTC on the 1st of the next month."""
    year, number = (month.year + 1, 1) if month.month == 12 else (month.year, month.month + 1)
    return datetime(year, number, 1, tzinfo=UTC)


def usd(value: Decimal) -> str:
    """An exact amount as a string, without a float's rounding or trailing zeros ("0.00005", "100")."""
    return f"{value.normalize():f}" if value else "0"


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Limit:
    scope: str
    name: str  # the username for a user's own or the default limit, the group's name for a group's
    limit_usd: Decimal
    soft_percent: int
    spent_usd: Decimal
    resets_at: datetime

    @property
    def remaining_usd(self) -> Decimal:
        return max(self.limit_usd - self.spent_usd, Decimal(0))

    @property
    def exhausted(self) -> bool:
        return self.spent_usd >= self.limit_usd

    @property
    def nearly_exhausted(self) -> bool:
        return self.spent_usd * 100 >= self.limit_usd * self.soft_percent

    def as_dict(self) -> dict:
        """The shape of GET /api/ai/usage/budget's ``limits`` items (and of a 429's details, without remaining)."""
        return {
            "scope": self.scope,
            "name": self.name,
            "limit_usd": usd(self.limit_usd),
            "spent_usd": usd(self.spent_usd),
            "remaining_usd": usd(self.remaining_usd),
            "soft_percent": self.soft_percent,
            "resets_at": _iso(self.resets_at),
        }


def _tables() -> dict[str, str]:
    user_model = get_user_model()
    return {
        "users": user_model._meta.db_table,
        "username": user_model._meta.get_field(user_model.USERNAME_FIELD).column,
        "memberships": user_model.groups.through._meta.db_table,
        "groups": Group._meta.db_table,
        "budget": Budget._meta.db_table,
        "spend": MonthlySpend._meta.db_table,
    }


@cache
def limits_sql(user: str = "%(user)s") -> str:
    """The rows of a user's limits with this month's spend: (scope, name, limit_usd, soft_percent, spent_usd), the
    user's own first (its limit null when they have none), then each of their groups' that has one, by name.
    Parameters ``limits_params``'s; ``user`` is the SQL that gives the user's id (its parameter, or an expression
    of the statement this one is part of). Written once per process."""
    t = _tables()
    return f"""
        SELECT 'user' AS scope, u.{t["username"]} AS name, b.monthly_usd AS limit_usd, b.soft_percent AS soft_percent,
               COALESCE(s.spent_usd, 0) AS spent_usd
        FROM {t["users"]} u
        LEFT JOIN {t["budget"]} b ON b.user_id = u.id
        LEFT JOIN {t["spend"]} s ON s.user_id = u.id AND s.group_id IS NULL AND s.month = %(month)s
        WHERE u.id = {user}
        UNION ALL
        SELECT 'group', g.name, b.monthly_usd, b.soft_percent, COALESCE(s.spent_usd, 0)
        FROM {t["memberships"]} m
        JOIN {t["budget"]} b ON b.group_id = m.group_id
        JOIN {t["groups"]} g ON g.id = m.group_id
        LEFT JOIN {t["spend"]} s ON s.user_id IS NULL AND s.group_id = m.group_id AND s.month = %(month)s
        WHERE m.user_id = {user}
        ORDER BY 1 DESC, 2
    """


def limits_order(alias: str) -> str:
    """``limits_sql``'s order, for a statement that joins its rows as ``alias``."""
    return f"{alias}.scope DESC, {alias}.name"


def limits_params(*, user_id: int, at: datetime | None = None) -> dict:
    """The parameters of ``limits_sql`` and ``limit_reached_sql`` for a user, this month (or ``at``'s)."""
    return {
        "month": month_of(at or timezone.now()),
        "user": user_id,
        "default_usd": settings.AI_BUDGET_DEFAULT_MONTHLY_USD,
    }


def limit_reached_sql(relation: str) -> str:
    """SQL that is true when a row of ``relation`` (``limits_sql``'s rows) is a reached limit, as
    ``Limit.exhausted`` judges it: the default (AI_BUDGET_DEFAULT_MONTHLY_USD) stands for a user's missing own."""
    return (
        f"EXISTS (SELECT 1 FROM {relation} AS l WHERE l.spent_usd >= COALESCE(l.limit_usd, %(default_usd)s::numeric))"
    )


def limits_read(rows: list[tuple], *, month: date) -> list[Limit]:
    """``limits_sql``'s rows as the limits that hold the user (a user without an own limit is held to the
    default, if there is one)."""
    ends = resets_at(month)
    limits = []
    for scope, name, limit_usd, soft_percent, spent in rows:
        if scope == Scope.USER and limit_usd is None:
            if settings.AI_BUDGET_DEFAULT_MONTHLY_USD is None:
                continue
            scope, limit_usd, soft_percent = (
                Scope.DEFAULT,
                settings.AI_BUDGET_DEFAULT_MONTHLY_USD,
                settings.AI_BUDGET_SOFT_PERCENT,
            )
        limits.append(Limit(scope, name, limit_usd, soft_percent, spent, ends))
    return limits


def budget_limits(*, user_id: int, at: datetime | None = None) -> list[Limit]:
    """The limits that hold a user this month with their spend, their own (or the default) first; empty when
    none does. One statement."""
    params = limits_params(user_id=user_id, at=at)
    with prepared.cursor() as cursor:
        cursor.execute(limits_sql(), params)
        rows = cursor.fetchall()
    return limits_read(rows, month=params["month"])


def budget_check(*, user_id: int, stage: str) -> None:
    """Raise BudgetExceeded naming the first limit of the user's that is reached. ``stage`` (submit or
    pipeline) labels the refusal's metric. (A single job's submission reads the limits inside its INSERT and an
    attempt inside its claim, jobs.admission, and both call ``budget_enforce``; a batch's submission calls this.)"""
    budget_enforce(budget_limits(user_id=user_id), stage=stage)


def budget_enforce(limits: list[Limit], *, stage: str) -> None:
    """Raise BudgetExceeded (429, with the limit as details and Retry-After until it resets) naming the first of
    ``limits`` that is reached, its refusal counted in the metric under ``stage``."""
    for limit in limits:
        if limit.exhausted:
            metrics.budget_refused(scope=limit.scope, stage=stage)
            details = {key: value for key, value in limit.as_dict().items() if key != "remaining_usd"}
            label = (
                "the default monthly budget of user"
                if limit.scope == Scope.DEFAULT
                else f"the monthly budget of {limit.scope}"
            )
            raise BudgetExceeded(
                f"{label} '{limit.name}' is exhausted: {usd(limit.spent_usd)} of {usd(limit.limit_usd)} USD spent "
                f"this month; it resets at {details['resets_at']}",
                details=details,
                retry_after=max(1, int((limit.resets_at - timezone.now()).total_seconds())),
            )


# --- input ---


def usd_parse(value: object, *, field: str = "monthly_usd") -> Decimal:
    """A USD amount from a Decimal, int or string; floats are refused (they are not exact)."""
    if isinstance(value, (bool, float)) or not isinstance(value, (Decimal, int, str)):
        raise InvalidInput(f"{field} must be a decimal number given as a string or an integer")
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, ValueError):
        raise InvalidInput(f"{field} must be a decimal number of USD, got {str(value)[:40]!r}") from None
    if not number.is_finite():
        raise InvalidInput(f"{field} must be a finite number")
    if number < 0:
        raise InvalidInput(f"{field} must not be negative")
    if number > USD_MAX:
        raise InvalidInput(f"{field} must be at most {USD_MAX} USD")
    if number != number.quantize(Decimal(1).scaleb(-USD_PLACES)):
        raise InvalidInput(f"{field} may have at most {USD_PLACES} decimal places")
    return number.quantize(Decimal(1).scaleb(-USD_PLACES))


def soft_percent_parse(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidInput("soft_percent must be a whole number from 1 to 100")
    try:
        number = int(value)
    except ValueError:
        raise InvalidInput(f"soft_percent must be a whole number from 1 to 100, got {str(value)[:40]!r}") from None
    if not 1 <= number <= 100:
        raise InvalidInput(f"soft_percent must be from 1 to 100, got {number}")
    return number


@dataclass(frozen=True)
class Holder:
    """Whose budget: exactly one of a user and a group."""

    scope: str
    name: str
    user: object | None = None
    group: Group | None = None

    @property
    def target_id(self) -> str:
        return f"{self.scope}:{(self.user or self.group).pk}"

    def budget(self) -> Budget | None:
        lookup = {"user": self.user} if self.user is not None else {"group": self.group}
        return Budget.objects.select_for_update().filter(**lookup).first()


def holder_resolve(*, user: str | None, group: str | None) -> Holder:
    if (user is None) == (group is None):
        raise InvalidInput("give exactly one of a user or a group")
    if user is not None:
        user_model = get_user_model()
        found = user_model.objects.filter(**{user_model.USERNAME_FIELD: user}).first()
        if found is None:
            raise NotFound(f"no user named {str(user)[:150]!r}")
        return Holder(scope=Scope.USER, name=found.get_username(), user=found)
    found = Group.objects.filter(name=group).first()
    if found is None:
        raise NotFound(f"no group named {str(group)[:150]!r}")
    return Holder(scope=Scope.GROUP, name=found.name, group=found)


def _terms(budget: Budget | None) -> dict | None:
    if budget is None:
        return None
    return {"monthly_usd": usd(budget.monthly_usd), "soft_percent": budget.soft_percent}


# --- writes ---


@transaction.atomic
def budget_set(
    *,
    user: str | None = None,
    group: str | None = None,
    monthly_usd: object,
    soft_percent: object = None,
    actor: Actor | None = None,
) -> Budget:
    """Set (or change) the monthly limit of a user or a group. ``soft_percent`` defaults to the budget's current
    one, else AI_BUDGET_SOFT_PERCENT. Takes effect at the next check: raising a limit lets waiting jobs run."""
    amount = usd_parse(monthly_usd)
    soft = None if soft_percent is None else soft_percent_parse(soft_percent)
    holder = holder_resolve(user=user, group=group)
    budget = holder.budget()
    previous = _terms(budget)
    if budget is None:
        budget = Budget(user=holder.user, group=holder.group)
    budget.monthly_usd = amount
    budget.soft_percent = soft or (previous and previous["soft_percent"]) or settings.AI_BUDGET_SOFT_PERCENT
    budget.save()
    if actor is not None:
        audit_record(
            actor=actor,
            action=AuditAction.BUDGET_SET,
            target_type="budget",
            target_id=holder.target_id,
            details={"scope": holder.scope, "name": holder.name, **_terms(budget), "previous": previous},
        )
    return budget


@transaction.atomic
def budget_clear(*, user: str | None = None, group: str | None = None, actor: Actor | None = None) -> Budget:
    """Remove a user's or a group's limit (the user falls back to the default). NotFound when there is none."""
    holder = holder_resolve(user=user, group=group)
    budget = holder.budget()
    if budget is None:
        raise NotFound(f"{holder.scope} {holder.name!r} has no budget")
    budget.delete()
    if actor is not None:
        audit_record(
            actor=actor,
            action=AuditAction.BUDGET_CLEAR,
            target_type="budget",
            target_id=holder.target_id,
            details={"scope": holder.scope, "name": holder.name, "previous": _terms(budget)},
        )
    return budget


# --- operators' views ---


def budget_list(*, at: datetime | None = None) -> list[dict]:
    """Every limit with this month's spend, users' then groups' by name, then the default (no spend of its own:
    each user without a limit spends against it alone)."""
    month = month_of(at or timezone.now())
    ends = resets_at(month)
    budgets = list(Budget.objects.select_related("user", "group"))
    spend = MonthlySpend.objects.filter(month=month)
    by_user = dict(
        spend.filter(user_id__in=[b.user_id for b in budgets if b.user_id]).values_list("user_id", "spent_usd")
    )
    by_group = dict(
        spend.filter(group_id__in=[b.group_id for b in budgets if b.group_id]).values_list("group_id", "spent_usd")
    )
    limits = [
        Limit(
            Scope.USER if b.user_id else Scope.GROUP,
            b.user.get_username() if b.user_id else b.group.name,
            b.monthly_usd,
            b.soft_percent,
            (by_user.get(b.user_id) if b.user_id else by_group.get(b.group_id)) or Decimal(0),
            ends,
        )
        for b in budgets
    ]
    limits.sort(key=lambda limit: (limit.scope != Scope.USER, limit.name))
    rows = [limit.as_dict() for limit in limits]
    if settings.AI_BUDGET_DEFAULT_MONTHLY_USD is not None:
        rows.append(
            {
                "scope": Scope.DEFAULT,
                "name": "",
                "limit_usd": usd(settings.AI_BUDGET_DEFAULT_MONTHLY_USD),
                "spent_usd": None,
                "remaining_usd": None,
                "soft_percent": settings.AI_BUDGET_SOFT_PERCENT,
                "resets_at": _iso(ends),
            }
        )
    return rows


@dataclass(frozen=True)
class Watch:
    """What /metrics says about budgets: per scope, how many are nearly exhausted (at or past their soft
    threshold, the exhausted included) and exhausted; and the WATCH_TOP most used of those, by name."""

    nearly_exhausted: dict[str, int]
    exhausted: dict[str, int]
    top: list[tuple[str, str, float]]  # (scope, name, spent / limit)


def _watch_sql() -> str:
    t = _tables()
    return f"""
        WITH over AS (
            SELECT 'user' AS scope, u.{t["username"]} AS name, b.monthly_usd AS lim, COALESCE(s.spent_usd, 0) AS spent,
                   b.soft_percent AS soft
            FROM {t["budget"]} b JOIN {t["users"]} u ON u.id = b.user_id
            LEFT JOIN {t["spend"]} s ON s.user_id = b.user_id AND s.group_id IS NULL AND s.month = %(month)s
            UNION ALL
            SELECT 'group', g.name, b.monthly_usd, COALESCE(s.spent_usd, 0), b.soft_percent
            FROM {t["budget"]} b JOIN {t["groups"]} g ON g.id = b.group_id
            LEFT JOIN {t["spend"]} s ON s.user_id IS NULL AND s.group_id = b.group_id AND s.month = %(month)s
            UNION ALL
            SELECT 'default', u.{t["username"]}, %(default)s, s.spent_usd, %(soft)s
            FROM {t["spend"]} s JOIN {t["users"]} u ON u.id = s.user_id
            WHERE %(default)s IS NOT NULL AND s.month = %(month)s AND s.group_id IS NULL
              AND s.spent_usd * 100 >= %(default)s * %(soft)s
              AND NOT EXISTS (SELECT 1 FROM {t["budget"]} b WHERE b.user_id = s.user_id)
        ), ranked AS (
            SELECT scope, name, lim, spent,
                   COUNT(*) OVER (PARTITION BY scope) AS nearly,
                   COUNT(*) FILTER (WHERE spent >= lim) OVER (PARTITION BY scope) AS exhausted,
                   row_number() OVER (ORDER BY spent / NULLIF(lim, 0) DESC NULLS FIRST, scope, name) AS overall,
                   row_number() OVER (PARTITION BY scope) AS in_scope
            FROM over WHERE spent * 100 >= lim * soft
        )
        SELECT scope, name, lim, spent, nearly, exhausted, overall FROM ranked
        WHERE overall <= %(top)s OR in_scope = 1
    """


def budget_watch(*, at: datetime | None = None) -> Watch:
    """One statement over the budgets and this month's spend rows past the default's threshold (an index range:
    MonthlySpend(month, spent_usd)), never over TokenUsage."""
    params = {
        "month": month_of(at or timezone.now()),
        "default": settings.AI_BUDGET_DEFAULT_MONTHLY_USD,
        "soft": settings.AI_BUDGET_SOFT_PERCENT,
        "top": WATCH_TOP,
    }
    with connection.cursor() as cursor:
        cursor.execute(_watch_sql(), params)
        rows = cursor.fetchall()
    nearly = dict.fromkeys(Scope.ALL, 0)
    exhausted = dict.fromkeys(Scope.ALL, 0)
    top = []
    for scope, name, lim, spent, n_nearly, n_exhausted, overall in rows:
        nearly[scope], exhausted[scope] = n_nearly, n_exhausted
        if overall <= WATCH_TOP:
            top.append((scope, name, float(spent / lim) if lim else 1.0))
    return Watch(nearly_exhausted=nearly, exhausted=exhausted, top=top)
