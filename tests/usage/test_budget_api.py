"""GET /api/ai/usage/budget, the 429 a submission past a limit gets (nothing written), and the admin's budgets."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from audit.models import AuditEntry
from jobs.models import AIJob
from jobs.queues import get_queue
from tests.factories import UserFactory
from usage import budgets
from usage.models import Budget, MonthlySpend
from usage.recording import month_of

from .conftest import record

pytestmark = pytest.mark.usefixtures("prices")

BUDGET = "/api/ai/usage/budget"
JOBS = "/api/ai/jobs"
BODY = {"prompt": "A page for a bakery", "provider": "simulated", "model": "sim-small"}


def test_unlimited_is_an_empty_list(api):
    response = api.get(BUDGET)
    assert response.status_code == 200 and response.json() == {"limits": []}


def test_a_user_sees_their_own_and_their_groups_limits(api, user, other_user, settings):
    settings.AI_BUDGET_DEFAULT_MONTHLY_USD = Decimal("5")
    team = Group.objects.create(name="design")
    team.user_set.add(user, other_user)
    budgets.budget_set(group="design", monthly_usd="3", soft_percent=50)
    record(user, prompt=1_000_000, at=timezone.now())  # 1 USD
    record(other_user, prompt=500_000, at=timezone.now())  # 0.5 USD, the team's too

    limits = api.get(BUDGET).json()["limits"]
    resets_at = budgets.resets_at(budgets.month_of(timezone.now())).isoformat().replace("+00:00", "Z")
    assert limits == [
        {
            "scope": "default",
            "name": "alice",
            "limit_usd": "5",
            "spent_usd": "1",
            "remaining_usd": "4",
            "soft_percent": 80,
            "resets_at": resets_at,
        },
        {
            "scope": "group",
            "name": "design",
            "limit_usd": "3",
            "spent_usd": "1.5",
            "remaining_usd": "1.5",
            "soft_percent": 50,
            "resets_at": resets_at,
        },
    ]
    budgets.budget_set(user="alice", monthly_usd="0.5")
    own = api.get(BUDGET).json()["limits"][0]
    assert (own["scope"], own["limit_usd"], own["spent_usd"], own["remaining_usd"]) == ("user", "0.5", "1", "0")


def test_staff_may_name_a_user_and_others_may_not(api, staff_api, user, other_user):
    budgets.budget_set(user="bob", monthly_usd="7")
    assert staff_api.get(BUDGET, {"user": "bob"}).json()["limits"][0]["limit_usd"] == "7"
    assert api.get(BUDGET, {"user": "alice"}).json() == {"limits": []}  # herself
    refused = api.get(BUDGET, {"user": "bob"})
    assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_denied"
    for nobody in ("nobody", "\n", " alice"):
        missing = staff_api.get(BUDGET, {"user": nobody})
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"


@pytest.mark.parametrize(
    "params",
    [{"scope": "user"}, {"user": "x" * 151}, {"user": ""}],
)
def test_bad_parameters_are_400(staff_api, params):
    response = staff_api.get(BUDGET, params)
    assert response.status_code == 400 and response.json()["error"]["type"] == "validation_error"


def test_anonymous_is_refused(anon_api):
    response = anon_api.get(BUDGET)
    assert response.status_code in (401, 403) and response.json()["error"]["type"] == "not_authenticated"


def test_a_submission_past_a_limit_is_429_and_writes_nothing(api, user, redis_conn):
    team = Group.objects.create(name="design")
    team.user_set.add(user)
    budgets.budget_set(group="design", monthly_usd="0.000050")
    record(user, prompt=30, completion=10, at=timezone.now())  # 0.000050: reached
    jobs_before = AIJob.objects.count()

    response = api.post(JOBS, BODY, format="json")

    assert response.status_code == 429, response.content
    error = response.json()["error"]
    assert error["type"] == "budget_exceeded" and "monthly budget of group 'design' is exhausted" in error["message"]
    assert error["details"] == {
        "scope": "group",
        "name": "design",
        "limit_usd": "0.00005",
        "spent_usd": "0.00005",
        "soft_percent": 80,
        "resets_at": budgets.resets_at(budgets.month_of(timezone.now())).isoformat().replace("+00:00", "Z"),
    }
    assert 0 < int(response["Retry-After"]) <= 31 * 86400
    assert AIJob.objects.count() == jobs_before and get_queue("ai-default").count == 0

    budgets.budget_set(group="design", monthly_usd="0.000051")  # raised: accepted again
    assert api.post(JOBS, BODY, format="json").status_code == 201


# --- the admin ---


@pytest.fixture
def admin_client(db) -> Client:
    client = Client()
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    return client


def test_the_admin_sets_changes_and_deletes_through_the_service(admin_client, user):
    add = admin_client.post(
        "/admin/usage/budget/add/", {"user": user.pk, "group": "", "monthly_usd": "2.5", "soft_percent": "75"}
    )
    assert add.status_code == 302, add.content.decode()[:2000]
    budget = Budget.objects.get(user=user)
    assert (budget.monthly_usd, budget.soft_percent) == (Decimal("2.5"), 75)
    listing = admin_client.get("/admin/usage/budget/")
    assert listing.status_code == 200 and "user alice" in listing.content.decode()

    change = admin_client.post(f"/admin/usage/budget/{budget.pk}/change/", {"monthly_usd": "4", "soft_percent": "75"})
    assert change.status_code == 302
    assert Budget.objects.get(user=user).monthly_usd == Decimal("4")
    delete = admin_client.post(f"/admin/usage/budget/{budget.pk}/delete/", {"post": "yes"})
    assert delete.status_code == 302 and not Budget.objects.exists()
    actions = list(AuditEntry.objects.order_by("id").values_list("action", "source", "actor"))
    assert actions == [
        ("budget.set", "admin", "root"),
        ("budget.set", "admin", "root"),
        ("budget.clear", "admin", "root"),
    ]


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"group": "", "monthly_usd": "1", "soft_percent": "80"}, "exactly one of a user or a group"),
        ({"monthly_usd": "-1", "soft_percent": "80"}, "budget_non_negative"),
        ({"monthly_usd": "1", "soft_percent": "101"}, "budget_soft"),
    ],
)
def test_the_admin_refuses_bad_input(admin_client, user, form, message):
    form = {"user": user.pk, **form} if "group" not in form else {"user": "", **form}
    response = admin_client.post("/admin/usage/budget/add/", form)
    assert response.status_code == 200 and message in response.content.decode()
    assert not Budget.objects.exists() and not AuditEntry.objects.exists()


def test_the_admin_is_for_staff_with_permission(user_client, staff_client):
    assert user_client.get("/admin/usage/budget/").status_code == 302  # to the login page
    assert staff_client.get("/admin/usage/budget/").status_code == 403  # staff without the budget permissions


def test_the_admin_list_shows_each_holders_spend_this_month(admin_client, user):
    team = Group.objects.create(name="design")
    budgets.budget_set(user=user.username, monthly_usd="1")
    budgets.budget_set(group="design", monthly_usd="5")
    month = month_of(timezone.now())
    MonthlySpend.objects.create(user=user, month=month, spent_usd=Decimal("0.0125"))
    MonthlySpend.objects.create(group=team, month=month, spent_usd=Decimal("2.5"))
    MonthlySpend.objects.create(group=team, month=month.replace(year=month.year - 1), spent_usd=Decimal("9"))

    cells = re.findall(
        r'<td class="field-spent_this_month">([^<]*)</td>', admin_client.get("/admin/usage/budget/").content.decode()
    )

    assert sorted(cells) == ["0.0125", "2.5"]  # last year's spend of the group is not this month's
