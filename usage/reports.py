"""Usage and cost reports, computed by the database.

Every date is a UTC calendar day and ranges are inclusive: ``start=2025-01-01&end=2025-01-31``
covers ``[2025-01-01T00:00Z, 2025-02-01T00:00Z)``. Sums are exact (costs are stored with 9 decimals)
and rounded once, half-up, to 6 decimals when rendered.

The JSON report is ONE statement: a GROUP BY GROUPING SETS over the range, giving the totals and
each breakdown in a single scan and a single snapshot, so the breakdowns always add up to the
totals even while workers keep writing. The CSV is one GROUP BY (date, provider, model, user)
read through a server-side cursor, so memory stays flat however many lines it has.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import QuerySet
from django.db.models.functions import TruncDate
from django.utils import timezone

from aipb.exceptions import InvalidInput
from jobs import catalogue
from usage.models import TokenUsage

MAX_RANGE_DAYS = 366
DEFAULT_DAYS = 30
DEFAULT_TOP = 10
MAX_TOP = 100
CSV_CHUNK_ROWS = 2_000
MONEY = Decimal("0.000001")
# the last day whose exclusive end (the next midnight) still fits in a datetime
LAST_DAY = date.max - timedelta(days=1)

TOTAL_KEYS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "total_tokens",
    "estimated_cost",
    "unpriced_requests",
)
CSV_HEADER = ("date", "provider", "model", "user", *TOTAL_KEYS)


def utc_today() -> date:
    return timezone.now().astimezone(UTC).date()


def money(value: Decimal | None) -> str:
    """USD as a string with 6 decimals; an empty sum (nothing priced) is 0."""
    return str((value or Decimal(0)).quantize(MONEY, rounding=ROUND_HALF_UP))


# --- ranges and filters: every check happens before anything is computed ---


@dataclass(frozen=True)
class ReportFilters:
    start: date
    end: date
    provider: str | None = None
    model: str | None = None
    owner_id: int | None = None  # None: everyone

    @property
    def start_at(self) -> datetime:
        return datetime.combine(self.start, time.min, tzinfo=UTC)

    @property
    def end_before(self) -> datetime:
        return datetime.combine(self.end + timedelta(days=1), time.min, tzinfo=UTC)


def check_range(start: date, end: date) -> tuple[date, date]:
    if end > LAST_DAY:
        raise InvalidInput(f"end must be on or before {LAST_DAY.isoformat()}")
    if start > end:
        raise InvalidInput(f"start ({start.isoformat()}) is after end ({end.isoformat()})")
    days = (end - start).days + 1
    if days > MAX_RANGE_DAYS:
        raise InvalidInput(f"the range covers {days} days; at most {MAX_RANGE_DAYS} days per report")
    return start, end


def range_between(*, start: date | None, end: date | None, today: date | None = None) -> tuple[date, date]:
    """Explicit dates; a missing end is today, a missing start is the first day of the end's month."""
    end = end or today or utc_today()
    start = start or end.replace(day=1)
    return check_range(start, end)


def range_last_n_days(*, days: int, today: date | None = None) -> tuple[date, date]:
    """Today and the ``days - 1`` days before it."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_RANGE_DAYS:
        raise InvalidInput(f"days must be an integer from 1 to {MAX_RANGE_DAYS}")
    end = today or utc_today()
    return check_range(end - timedelta(days=days - 1), end)


def range_month_to_date(*, today: date | None = None) -> tuple[date, date]:
    end = today or utc_today()
    return end.replace(day=1), end


def canonical_model_any(model: str, provider: str | None) -> str:
    """Rows store the catalogue's canonical name; a filter given as an alias or dated id finds them too."""
    if provider:
        return catalogue.canonical_model(provider, model)
    for candidate in catalogue.PROVIDER_IDS:
        name = catalogue.canonical_model(candidate, model)
        if name != model:
            return name
    return model


def report_filters(
    *,
    start: date,
    end: date,
    provider: str | None = None,
    model: str | None = None,
    username: str | None = None,
    owner_id: int | None = None,
) -> ReportFilters:
    """Validated filters. ``username`` is looked up (unknown → InvalidInput); ``owner_id`` is taken as is."""
    start, end = check_range(start, end)
    if provider is not None and provider not in catalogue.PROVIDER_IDS:
        raise InvalidInput(f"unknown provider '{provider}'; choose one of {', '.join(catalogue.PROVIDER_IDS)}")
    if model is not None and not 1 <= len(model) <= 200:
        raise InvalidInput("model must be 1 to 200 characters")
    if username is not None:
        user_model = get_user_model()
        found = user_model._default_manager.filter(**{user_model.USERNAME_FIELD: username}).values_list("pk", flat=True)
        owner_id = next(iter(found), None)
        if owner_id is None:
            raise InvalidInput(f"unknown user '{username}'")
    return ReportFilters(
        start=start,
        end=end,
        provider=provider or None,
        model=canonical_model_any(model, provider) if model else None,
        owner_id=owner_id,
    )


def _rows(filters: ReportFilters) -> QuerySet[TokenUsage]:
    qs = TokenUsage.objects.filter(created_at__gte=filters.start_at, created_at__lt=filters.end_before)
    if filters.provider:
        qs = qs.filter(provider=filters.provider)
    if filters.model:
        qs = qs.filter(model=filters.model)
    if filters.owner_id is not None:
        qs = qs.filter(owner_id=filters.owner_id)
    return qs.order_by()


# --- the JSON report ---


def _totals(requests, prompt, completion, cached, cost, unpriced) -> dict:
    return {
        "requests": int(requests),
        "prompt_tokens": int(prompt),
        "completion_tokens": int(completion),
        "cached_tokens": int(cached),
        "total_tokens": int(prompt) + int(completion),
        "estimated_cost": money(cost),
        "unpriced_requests": int(unpriced),
        "_cost": cost or Decimal(0),  # exact, for ordering top_users; dropped before returning
    }


# Two steps: a hash aggregate down to (provider, model, user, day) — at most a few thousand groups
# for a month — then the grouping sets over those. Grouping sets straight over the rows sort the
# whole range once per set: about twice as slow on a month of 1M rows (bench/RESULTS.md).
_GROUPING_SQL = """
WITH usage_rows AS ({rows}),
fine AS (
    SELECT provider, model, owner_id, day,
           COUNT(*) AS requests,
           SUM(prompt_tokens) AS prompt,
           SUM(completion_tokens) AS completion,
           SUM(cached_tokens) AS cached,
           SUM(cost) AS cost,
           COUNT(*) FILTER (WHERE cost IS NULL) AS unpriced
    FROM usage_rows
    GROUP BY provider, model, owner_id, day
)
SELECT GROUPING(provider, model, owner_id, day) AS grouping_mask,
       provider, model, owner_id, day,
       COALESCE(SUM(requests), 0)::bigint,
       COALESCE(SUM(prompt), 0)::bigint,
       COALESCE(SUM(completion), 0)::bigint,
       COALESCE(SUM(cached), 0)::bigint,
       SUM(cost),
       COALESCE(SUM(unpriced), 0)::bigint
FROM fine
GROUP BY GROUPING SETS ((), (provider), (model), (owner_id), (day))
"""
# GROUPING(provider, model, owner_id, day): a bit is 1 where that column is NOT grouped.
_MASK_TOTAL = 0b1111
_MASK_PROVIDER = 0b0111
_MASK_MODEL = 0b1011
_MASK_USER = 0b1101
_MASK_DATE = 0b1110


def _usage_rows_sql(filters: ReportFilters) -> tuple[str, tuple]:
    """The filtered rows with their UTC day, as SQL for the aggregate statements to read FROM."""
    rows = (
        _rows(filters)
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("provider", "model", "owner_id", "day", "prompt_tokens", "completion_tokens", "cached_tokens", "cost")
    )
    return rows.query.sql_with_params()


def _grouped(filters: ReportFilters) -> list[tuple]:
    inner, params = _usage_rows_sql(filters)
    with connection.cursor() as cursor:
        cursor.execute(_GROUPING_SQL.format(rows=inner), params)
        return cursor.fetchall()


def _usernames(owner_ids: list[int]) -> dict[int, str]:
    if not owner_ids:
        return {}
    user_model = get_user_model()
    return dict(
        user_model._default_manager.filter(pk__in=owner_ids).values_list("pk", user_model.USERNAME_FIELD).order_by()
    )


def usage_report(*, filters: ReportFilters, top: int = DEFAULT_TOP) -> dict:
    """The report body (see the module docstring); one aggregate statement plus one username lookup."""
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP:
        raise InvalidInput(f"top must be an integer from 1 to {MAX_TOP}")
    total = _totals(0, 0, 0, 0, None, 0)
    by_provider: dict[str, dict] = {}
    by_model: dict[str, dict] = {}
    by_owner: dict[int, dict] = {}
    by_date: dict[str, dict] = {}
    # one entry per group (providers + models + users + days + 1), never per usage row
    for mask, provider, model, owner_id, day, *sums in _grouped(filters):
        if mask == _MASK_TOTAL:
            total = _totals(*sums)
        elif mask == _MASK_PROVIDER:
            by_provider[provider] = _totals(*sums)
        elif mask == _MASK_MODEL:
            by_model[model] = _totals(*sums)
        elif mask == _MASK_USER:
            by_owner[owner_id] = _totals(*sums)
        elif mask == _MASK_DATE:
            by_date[day.isoformat()] = _totals(*sums)
    names = _usernames(list(by_owner))
    by_user = {names.get(owner_id, f"#{owner_id}"): totals for owner_id, totals in by_owner.items()}
    ranked = sorted(by_user.items(), key=lambda item: (-item[1]["_cost"], -item[1]["total_tokens"], item[0]))
    top_users = [
        {
            "user": name,
            "requests": totals["requests"],
            "total_tokens": totals["total_tokens"],
            "estimated_cost": totals["estimated_cost"],
        }
        for name, totals in ranked[:top]
    ]
    for totals in (total, *by_provider.values(), *by_model.values(), *by_user.values(), *by_date.values()):
        totals.pop("_cost")
    return {
        "start": filters.start.isoformat(),
        "end": filters.end.isoformat(),
        "requests": total["requests"],
        "prompt_tokens": total["prompt_tokens"],
        "completion_tokens": total["completion_tokens"],
        "cached_tokens": total["cached_tokens"],
        "total_tokens": total["total_tokens"],
        "total_estimated_cost": total["estimated_cost"],
        "unpriced_requests": total["unpriced_requests"],
        "by_provider": dict(sorted(by_provider.items())),
        "by_model": dict(sorted(by_model.items())),
        "by_user": dict(sorted(by_user.items())),
        "by_date": dict(sorted(by_date.items())),
        "top_users": top_users,
    }


def month_to_date_summary(*, today: date | None = None) -> dict:
    """This UTC month so far, everyone's usage: for the operations page and the admin usage page.

    ``by_date`` has every day from the 1st to today (zero days included, for charts).
    """
    start, end = range_month_to_date(today=today)
    report = usage_report(filters=report_filters(start=start, end=end))
    by_date = {}
    day = start
    while day <= end:
        key = day.isoformat()
        by_date[key] = report["by_date"].get(key) or _zero_totals()
        day += timedelta(days=1)
    return {
        "start": report["start"],
        "end": report["end"],
        "total_estimated_cost": report["total_estimated_cost"],
        "requests": report["requests"],
        "total_tokens": report["total_tokens"],
        "unpriced_requests": report["unpriced_requests"],
        "by_provider": report["by_provider"],
        "by_date": by_date,
    }


def _zero_totals() -> dict:
    totals = _totals(0, 0, 0, 0, None, 0)
    totals.pop("_cost")
    return totals


# --- CSV ---


_CSV_SQL = """
WITH usage_rows AS ({rows})
SELECT g.day, g.provider, g.model, u.{username}, g.requests, g.prompt, g.completion, g.cached, g.cost, g.unpriced
FROM (
    SELECT day, provider, model, owner_id,
           COUNT(*) AS requests,
           COALESCE(SUM(prompt_tokens), 0) AS prompt,
           COALESCE(SUM(completion_tokens), 0) AS completion,
           COALESCE(SUM(cached_tokens), 0) AS cached,
           SUM(cost) AS cost,
           COUNT(*) FILTER (WHERE cost IS NULL) AS unpriced
    FROM usage_rows
    GROUP BY day, provider, model, owner_id
) AS g
JOIN {users} AS u ON u.{user_pk} = g.owner_id
ORDER BY g.day, g.provider, g.model, u.{username}, g.owner_id
"""


def _read_cursor():
    # A server-side cursor (what QuerySet.iterator() uses), so lines are fetched in chunks, unless the
    # deployment turned them off (a transaction-pooling PgBouncer) -- then the client cursor's own buffer.
    if connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS"):
        return connection.cursor()
    return connection.chunked_cursor()


def csv_lines(*, filters: ReportFilters) -> Iterator[tuple]:
    """Header, then one line per (date, provider, model, user) with the report's totals.

    One statement: aggregate first, then name the users of the (few) groups, then sort the groups,
    read in chunks through a server-side cursor: memory here stays flat however many lines there are.
    """
    yield CSV_HEADER
    user_model = get_user_model()
    quote = connection.ops.quote_name
    inner, params = _usage_rows_sql(filters)
    sql = _CSV_SQL.format(
        rows=inner,
        users=quote(user_model._meta.db_table),
        user_pk=quote(user_model._meta.pk.column),
        username=quote(user_model._meta.get_field(user_model.USERNAME_FIELD).column),
    )
    cursor = _read_cursor()
    try:
        cursor.execute(sql, params)
        while chunk := cursor.fetchmany(CSV_CHUNK_ROWS):
            for day, provider, model, username, n, prompt, completion, cached, cost, unpriced in chunk:
                yield (
                    day.isoformat(),
                    _cell(provider),
                    _cell(model),
                    _cell(username),
                    n,
                    prompt,
                    completion,
                    cached,
                    prompt + completion,
                    money(cost),
                    unpriced,
                )
    finally:
        cursor.close()


def _cell(text: str) -> str:
    # A spreadsheet runs a cell that starts with = + - @ as a formula; model names can be user-chosen
    # (OpenAI-compatible servers), so neutralise them the way OWASP recommends.
    if text and text[0] in "=+-@\t\r":
        return "'" + text
    return text


class _Echo:
    def write(self, value: str) -> str:
        return value


def csv_stream(*, filters: ReportFilters) -> Iterator[str]:
    writer = csv.writer(_Echo(), lineterminator="\r\n")
    for line in csv_lines(filters=filters):
        yield writer.writerow(line)
