"""usage.budgets and the spend it checks: the counters equal the rows on every path (durable, by hand, the spool's
replay, a replay twice), limits read in one statement, set/clear validated and audited, and what /metrics says."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ImproperlyConfigured
from django.db import OperationalError, connection
from django.db.models import Sum
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from aipb.env import env_decimal
from aipb.exceptions import InvalidInput, NotFound
from audit.models import AuditEntry
from audit.records import Actor
from jobs.errors import BudgetExceeded
from jobs.providers.base import Usage
from monitoring.collectors import ScrapeTimeCollector
from tests.aipb.test_database_outage import Outage
from tests.e2e.books import _spend_problems
from tests.factories import UserFactory, submit_job
from usage import budgets
from usage.models import Budget, MonthlySpend, TokenUsage
from usage.recording import SPOOL_KEY, usage_record_durable, usage_spool_replay

from .conftest import record, utc

pytestmark = pytest.mark.usefixtures("prices")

CALL = Usage(prompt_tokens=10, completion_tokens=5)  # 0.000020 USD at sim-small's seeded price
ACTOR = Actor(name="ops", source="command")


def spend(**owner) -> Decimal:
    return MonthlySpend.objects.filter(**owner).aggregate(total=Sum("spent_usd"))["total"] or Decimal(0)


@pytest.fixture
def team(user, other_user):
    group = Group.objects.create(name="design")
    group.user_set.add(user, other_user)
    return group


# --- the counters ---


def test_spend_is_added_once_per_row_for_the_owner_and_each_group(user, team, redis_conn):
    job = submit_job(user, simulate={})
    at = timezone.now()
    first = usage_record_durable(job=job, attempt=1, usage=CALL, at=at)
    again = usage_record_durable(job=job, attempt=1, usage=CALL, at=at)  # a recording retried: no second row

    assert first.cost == again.cost == Decimal("0.000020")
    assert TokenUsage.objects.count() == 1
    assert spend(user=user) == spend(group=team) == Decimal("0.000020")
    assert MonthlySpend.objects.get(user=user).month == date(at.year, at.month, 1)


def test_spend_follows_the_month_of_the_call(user):
    record(user, prompt=1_000_000, at=utc(2025, 1, 31, 23, 59, 59))
    record(user, prompt=1_000_000, completion=1, at=utc(2025, 2, 1))
    rows = dict(MonthlySpend.objects.filter(user=user).values_list("month", "spent_usd"))
    assert rows == {date(2025, 1, 1): Decimal("1"), date(2025, 2, 1): Decimal("1.000002")}


def test_unpriced_calls_add_nothing(user):
    record(user, provider="openai", model="llama3.1:8b", prompt=1000, at=timezone.now())  # unpriced: cost NULL
    assert not MonthlySpend.objects.exists()


def test_spooled_usage_is_counted_once_when_replayed_even_twice(transactional_db, user, team, redis_conn):
    job = submit_job(user, simulate={})
    at = timezone.now()
    outage = Outage()
    outage()
    try:
        assert usage_record_durable(job=job, attempt=1, usage=CALL, at=at).spooled
    finally:
        outage.end()
    raw = redis_conn.lindex(SPOOL_KEY, 0)
    assert not MonthlySpend.objects.exists()

    assert usage_spool_replay() == 1
    redis_conn.rpush(SPOOL_KEY, raw)  # a crash between the replay's commit and its LREM
    assert usage_spool_replay() == 1

    assert TokenUsage.objects.count() == 1
    assert spend(user=user) == spend(group=team) == Decimal("0.000020")
    assert json.loads(raw)["attempt"] == 1


def test_counters_equal_the_rows_sums(user, other_user, team):
    now = timezone.now()
    for owner, prompt in ((user, 3), (other_user, 7), (user, 11)):
        record(owner, prompt=prompt, completion=prompt, at=now)
    month = date(now.year, now.month, 1)
    for owner in (user, other_user):
        rows = TokenUsage.objects.filter(owner=owner).aggregate(total=Sum("cost"))["total"]
        assert MonthlySpend.objects.get(user=owner, month=month).spent_usd == rows
    assert (
        MonthlySpend.objects.get(group=team, month=month).spent_usd
        == TokenUsage.objects.aggregate(total=Sum("cost"))["total"]
    )


# --- limits ---


def test_limits_are_read_in_one_statement(user, team, settings):
    settings.AI_BUDGET_DEFAULT_MONTHLY_USD = Decimal("5")
    budgets.budget_set(group="design", monthly_usd="2")
    other = Group.objects.create(name="all-hands")
    other.user_set.add(user)
    budgets.budget_set(group="all-hands", monthly_usd="100", soft_percent=50)
    record(user, prompt=1_000_000, at=timezone.now())  # 1 USD

    with CaptureQueriesContext(connection) as queries:
        limits = budgets.budget_limits(user_id=user.pk)
    assert len(queries) == 1
    assert [(limit.scope, limit.name, limit.limit_usd, limit.spent_usd) for limit in limits] == [
        ("default", "alice", Decimal("5"), Decimal("1")),
        ("group", "all-hands", Decimal("100"), Decimal("1")),
        ("group", "design", Decimal("2"), Decimal("1")),
    ]
    assert limits[2].remaining_usd == Decimal("1") and not limits[2].exhausted
    assert limits[0].resets_at > timezone.now()

    budgets.budget_set(user="alice", monthly_usd="1")  # her own limit replaces the default
    [own, *_] = budgets.budget_limits(user_id=user.pk)
    assert (own.scope, own.exhausted, own.remaining_usd) == ("user", True, Decimal(0))
    with pytest.raises(BudgetExceeded) as refused:
        budgets.budget_check(user_id=user.pk, stage="submit")
    assert refused.value.status_code == 429 and refused.value.retry_after > 0
    assert refused.value.details == {
        "scope": "user",
        "name": "alice",
        "limit_usd": "1",
        "spent_usd": "1",
        "soft_percent": 80,
        "resets_at": own.as_dict()["resets_at"],
    }


def test_with_postgres_gone_a_check_fails_and_changes_nothing(transactional_db, user):
    budgets.budget_set(user="alice", monthly_usd="0")
    outage = Outage()
    outage()
    try:
        with pytest.raises(OperationalError):
            budgets.budget_check(user_id=user.pk, stage="submit")
    finally:
        outage.end()
    with pytest.raises(BudgetExceeded):
        budgets.budget_check(user_id=user.pk, stage="submit")


def test_no_limits_means_unlimited(user):
    assert budgets.budget_limits(user_id=user.pk) == []
    budgets.budget_check(user_id=user.pk, stage="submit")


def test_resets_at_is_the_next_utc_month():
    assert budgets.resets_at(date(2026, 12, 1)) == datetime(2027, 1, 1, tzinfo=UTC)
    assert budgets.resets_at(date(2027, 1, 1)) == datetime(2027, 2, 1, tzinfo=UTC)


# --- set and clear ---


def test_set_change_and_clear_are_audited(user, team):
    budgets.budget_set(user="alice", monthly_usd="12.5", soft_percent="90", actor=ACTOR)
    budgets.budget_set(user="alice", monthly_usd=20, actor=ACTOR)  # the soft threshold is kept
    budgets.budget_set(group="design", monthly_usd="0.000050", actor=ACTOR)
    assert Budget.objects.get(user=user).soft_percent == 90
    assert Budget.objects.get(group=team).soft_percent == 80
    budgets.budget_clear(user="alice", actor=ACTOR)
    assert not Budget.objects.filter(user=user).exists()

    entries = list(AuditEntry.objects.order_by("id").values("action", "target_id", "details", "actor"))
    assert [e["action"] for e in entries] == ["budget.set", "budget.set", "budget.set", "budget.clear"]
    assert entries[0]["details"] == {
        "scope": "user",
        "name": "alice",
        "monthly_usd": "12.5",
        "soft_percent": 90,
        "previous": None,
    }
    assert entries[1]["details"]["previous"] == {"monthly_usd": "12.5", "soft_percent": 90}
    assert entries[2]["target_id"] == f"group:{team.pk}" and entries[3]["target_id"] == f"user:{user.pk}"
    assert entries[3]["details"]["previous"] == {"monthly_usd": "20", "soft_percent": 90}


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"user": "alice", "monthly_usd": "-1"}, InvalidInput, "must not be negative"),
        ({"user": "alice", "monthly_usd": "ten"}, InvalidInput, "must be a decimal number"),
        ({"user": "alice", "monthly_usd": "NaN"}, InvalidInput, "finite"),
        ({"user": "alice", "monthly_usd": "Infinity"}, InvalidInput, "finite"),
        ({"user": "alice", "monthly_usd": 1.5}, InvalidInput, "decimal number given as a string"),
        ({"user": "alice", "monthly_usd": "0.0000001"}, InvalidInput, "at most 6 decimal places"),
        ({"user": "alice", "monthly_usd": "1e12"}, InvalidInput, "at most"),
        ({"user": "alice", "monthly_usd": "1", "soft_percent": "0"}, InvalidInput, "from 1 to 100"),
        ({"user": "alice", "monthly_usd": "1", "soft_percent": "101"}, InvalidInput, "from 1 to 100"),
        ({"user": "alice", "monthly_usd": "1", "soft_percent": "eighty"}, InvalidInput, "whole number"),
        ({"user": "nobody", "monthly_usd": "1"}, NotFound, "no user named 'nobody'"),
        ({"group": "nobody", "monthly_usd": "1"}, NotFound, "no group named 'nobody'"),
        ({"user": "alice", "group": "design", "monthly_usd": "1"}, InvalidInput, "exactly one"),
        ({"monthly_usd": "1"}, InvalidInput, "exactly one"),
    ],
)
def test_bad_input_changes_nothing(user, team, kwargs, error, message):
    budgets.budget_set(group="design", monthly_usd="3", actor=ACTOR)
    before = list(Budget.objects.values()), AuditEntry.objects.count()
    with pytest.raises(error, match=message):
        budgets.budget_set(**kwargs, actor=ACTOR)
    assert (list(Budget.objects.values()), AuditEntry.objects.count()) == before


def test_clearing_what_is_not_there_is_not_found(user):
    with pytest.raises(NotFound, match="has no budget"):
        budgets.budget_clear(user="alice", actor=ACTOR)
    assert not AuditEntry.objects.exists()


# --- what /metrics says ---


def samples(name: str) -> dict:
    out = {}
    for family in ScrapeTimeCollector().collect():
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_the_gauges_count_nearly_exhausted_and_exhausted_limits_with_bounded_names(user, other_user, team, settings):
    settings.AI_BUDGET_DEFAULT_MONTHLY_USD = Decimal("1")
    carol, dave = UserFactory(username="carol"), UserFactory(username="dave")
    budgets.budget_set(user="alice", monthly_usd="10")  # alice 9 of 10: nearly
    budgets.budget_set(group="design", monthly_usd="10")  # alice + bob 9.5 of 10: nearly
    now = timezone.now()
    record(user, prompt=9_000_000, at=now)
    record(other_user, prompt=500_000, at=now)  # bob 0.5 of the default 1: under 80 %
    record(carol, prompt=1_000_000, at=now)  # carol 1 of the default 1: exhausted
    record(dave, prompt=100_000, at=now)  # dave: far under

    assert samples("ai_budgets_nearly_exhausted") == {
        (("scope", "user"),): 1,
        (("scope", "group"),): 1,
        (("scope", "default"),): 1,
    }
    assert samples("ai_budgets_exhausted") == {
        (("scope", "user"),): 0,
        (("scope", "group"),): 0,
        (("scope", "default"),): 1,
    }
    assert samples("ai_budget_spent_ratio") == {
        (("name", "carol"), ("scope", "default")): 1.0,
        (("name", "design"), ("scope", "group")): 0.95,
        (("name", "alice"), ("scope", "user")): 0.9,
    }


def test_the_named_gauge_keeps_only_the_most_used(settings):
    settings.AI_BUDGET_DEFAULT_MONTHLY_USD = Decimal("1")
    now = timezone.now()
    for n in range(budgets.WATCH_TOP + 5):
        record(UserFactory(username=f"heavy{n:02}"), prompt=1_000_000 + n, at=now)
    assert samples("ai_budgets_exhausted")[(("scope", "default"),)] == budgets.WATCH_TOP + 5
    named = samples("ai_budget_spent_ratio")
    assert len(named) == budgets.WATCH_TOP
    assert (("name", f"heavy{budgets.WATCH_TOP + 4:02}"), ("scope", "default")) in named


# --- the default's setting ---


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, None), ("", None), (" 12.5 ", Decimal("12.5")), ("0", Decimal("0")), ("0.000050", Decimal("0.000050"))],
)
def test_the_default_is_read_exactly(monkeypatch, raw, expected):
    if raw is None:
        monkeypatch.delenv("AI_BUDGET_DEFAULT_MONTHLY_USD", raising=False)
    else:
        monkeypatch.setenv("AI_BUDGET_DEFAULT_MONTHLY_USD", raw)
    assert env_decimal("AI_BUDGET_DEFAULT_MONTHLY_USD", minimum=Decimal(0), places=6) == expected


@pytest.mark.parametrize("raw", ["ten", "-1", "NaN", "inf", "0.0000001"])
def test_a_bad_default_stops_the_start(monkeypatch, raw):
    monkeypatch.setenv("AI_BUDGET_DEFAULT_MONTHLY_USD", raw)
    with pytest.raises(ImproperlyConfigured, match="AI_BUDGET_DEFAULT_MONTHLY_USD"):
        env_decimal("AI_BUDGET_DEFAULT_MONTHLY_USD", minimum=Decimal(0), places=6)


def test_the_drills_books_catch_a_counter_that_disagrees_with_the_rows(user):
    record(user, prompt=1_000_000, at=utc(2025, 3, 4))
    assert _spend_problems("default") == []
    MonthlySpend.objects.filter(user=user).update(spent_usd=Decimal("2"))
    assert _spend_problems("default") == [
        f"user {user.pk} in 2025-03: spent 2.000000000 by the counter, 1.000000000 by the usage rows"
    ]
