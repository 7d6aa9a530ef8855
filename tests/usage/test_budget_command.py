"""manage.py usage budget list|set|clear: tables, --json, the audit trail, and bad input a one-line CommandError
that changes nothing."""

from __future__ import annotations

import json
from decimal import Decimal
from io import StringIO

import pytest
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.utils import timezone

from audit.models import AuditEntry
from usage.models import Budget

from .conftest import record

pytestmark = pytest.mark.usefixtures("prices")


def run(*args: str) -> str:
    out = StringIO()
    call_command("usage", "budget", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def team(user, other_user):
    group = Group.objects.create(name="design")
    group.user_set.add(user, other_user)
    return group


def test_set_list_and_clear(user, team, settings):
    settings.AI_BUDGET_DEFAULT_MONTHLY_USD = Decimal("5")
    assert run("set", "--user", "alice", "--monthly-usd", "10") == (
        "budget set: user alice 10 USD per month, nearly exhausted at 80%\n"
    )
    assert "group design 0.00005 USD per month, nearly exhausted at 90%" in run(
        "set", "--group", "design", "--monthly-usd", "0.000050", "--soft-percent", "90"
    )
    record(user, prompt=9_000_000, at=timezone.now())  # 9 USD: alice nearly, the team exhausted

    table = run("list")
    lines = table.splitlines()
    assert lines[0].startswith("USD this UTC month; spend resets at ")
    assert lines[1].split() == ["scope", "name", "limit", "spent", "remaining", "soft", "state"]
    assert lines[3].split() == ["user", "alice", "10", "9", "1", "80%", "nearly", "exhausted"]
    assert lines[4].split() == ["group", "design", "0.00005", "9", "0", "90%", "exhausted"]
    assert lines[5].split()[:3] == ["default", "(everyone", "without"]

    body = json.loads(run("list", "--json"))
    assert [(row["scope"], row["name"], row["limit_usd"], row["spent_usd"]) for row in body["limits"]] == [
        ("user", "alice", "10", "9"),
        ("group", "design", "0.00005", "9"),
        ("default", "", "5", None),
    ]

    assert run("clear", "--group", "design") == "budget cleared: group design (was 0.00005 USD per month)\n"
    assert list(Budget.objects.values_list("user__username", flat=True)) == ["alice"]
    entries = list(AuditEntry.objects.order_by("id").values_list("action", "source", "target_type"))
    assert entries == [("budget.set", "command", "budget")] * 2 + [("budget.clear", "command", "budget")]


def test_list_without_limits_says_unlimited(db):
    assert run("list") == "no limits: spend is unlimited (set one with `usage budget set`)\n"
    assert json.loads(run("list", "--json")) == {"limits": []}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set", "--user", "alice", "--monthly-usd", "-5"], "monthly_usd must not be negative"),
        (["set", "--user", "alice", "--monthly-usd", "lots"], "monthly_usd must be a decimal number"),
        (["set", "--user", "alice", "--monthly-usd", "1.0000001"], "at most 6 decimal places"),
        (["set", "--user", "alice", "--monthly-usd", "nan"], "finite"),
        (["set", "--user", "alice", "--monthly-usd", "1", "--soft-percent", "0"], "from 1 to 100"),
        (["set", "--user", "alice", "--monthly-usd", "1", "--soft-percent", "x"], "whole number"),
        (["set", "--user", "nobody", "--monthly-usd", "1"], "no user named 'nobody'"),
        (["set", "--group", "nobody", "--monthly-usd", "1"], "no group named 'nobody'"),
        (["set", "--user", "alice", "--group", "design", "--monthly-usd", "1"], "not allowed with argument"),
        (["set", "--monthly-usd", "1"], "one of the arguments --user --group is required"),
        (["set", "--user", "alice"], "the following arguments are required: --monthly-usd"),
        (["clear", "--user", "bob"], "user 'bob' has no budget"),
        (["clear", "--user", "nobody"], "no user named 'nobody'"),
        (["clear"], "one of the arguments --user --group is required"),
        (["clear", "--user", "alice", "--group", "design"], "not allowed with argument"),
        (["list", "--bogus"], "unrecognized arguments"),
        (["raise"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(user, team, args, message):
    run("set", "--user", "alice", "--monthly-usd", "3")
    before = list(Budget.objects.values()), AuditEntry.objects.count()
    with pytest.raises(CommandError, match=message) as refused:
        run(*args)
    assert "\n" not in str(refused.value)
    assert (list(Budget.objects.values()), AuditEntry.objects.count()) == before
