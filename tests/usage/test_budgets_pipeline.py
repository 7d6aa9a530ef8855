"""Budgets end to end: real jobs through a real RQ worker against exact limits, to the nano-dollar.

sim-small costs 1 / 2 USD per million tokens in / out (the seeded price), so a call of 10 prompt and 5 completion
tokens costs exactly 0.000020 USD; against a limit of 0.000050 the third call crosses it.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth.models import Group
from django.db.models import Sum

from dlq import services as dlq_services
from dlq.models import DeadLetter
from jobs.errors import BudgetExceeded
from jobs.models import AIJob, JobAttempt, JobStatus
from tests.factories import UserFactory, submit_job
from usage import budgets
from usage.models import MonthlySpend, TokenUsage

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("prices")]

CALL = {"prompt_tokens": 10, "completion_tokens": 5}  # 0.000020 USD at sim-small's price
CALL_COST = Decimal("0.000020")


def spent(**owner) -> Decimal:
    return MonthlySpend.objects.filter(**owner).aggregate(total=Sum("spent_usd"))["total"] or Decimal(0)


def called(job: AIJob) -> bool:
    return TokenUsage.objects.filter(job=job).exists()


def test_the_job_that_crosses_the_limit_is_the_last_one_sent(user, run_worker):
    budgets.budget_set(user="alice", monthly_usd="0.000050")
    jobs = [submit_job(user, simulate=CALL) for _ in range(5)]  # all under the limit when submitted

    run_worker()

    for job in jobs:
        job.refresh_from_db()
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * 3 + [JobStatus.DEAD] * 2
    assert [called(job) for job in jobs] == [True, True, True, False, False]
    # exactly three calls billed: the counter is the rows' sum, to the nano-dollar
    assert spent(user=user) == 3 * CALL_COST == TokenUsage.objects.aggregate(total=Sum("cost"))["total"]
    for job in jobs[3:]:
        assert (
            job.error_type == "BUDGET_EXCEEDED" and "'alice' is exhausted: 0.00006 of 0.00005 USD" in job.error_message
        )
        [attempt] = JobAttempt.objects.filter(job=job)
        assert attempt.error_type == "BUDGET_EXCEEDED" and attempt.provider_request_id == ""
        assert attempt.prompt_tokens == 0 and attempt.validation_passed is None
        [entry] = DeadLetter.objects.filter(job_uuid=job.id)
        assert entry.error_type == "BUDGET_EXCEEDED" and entry.retryable is False and entry.status == "open"

    # at the limit, a new submission is refused and writes nothing
    with pytest.raises(BudgetExceeded) as refused:
        submit_job(user, simulate=CALL)
    assert refused.value.details["scope"] == "user" and refused.value.details["spent_usd"] == "0.00006"
    assert AIJob.objects.count() == 5

    # a retry while still over the limit dies again without a call; after the limit is raised it runs
    stuck = jobs[3]
    dlq_services.dlq_retry(entry_id=DeadLetter.objects.get(job_uuid=stuck.id).id)
    run_worker()
    stuck.refresh_from_db()
    assert stuck.status == JobStatus.DEAD and not called(stuck)

    budgets.budget_set(user="alice", monthly_usd="0.0001")
    dlq_services.dlq_retry(entry_id=DeadLetter.objects.get(job_uuid=stuck.id, status="open").id)
    run_worker()
    stuck.refresh_from_db()
    assert stuck.status == JobStatus.SUCCEEDED and called(stuck)
    assert spent(user=user) == 4 * CALL_COST


def test_a_group_budget_is_shared_by_its_members(user, other_user, run_worker):
    team = Group.objects.create(name="design")
    team.user_set.add(user, other_user)
    outsider = UserFactory(username="carol")
    budgets.budget_set(group="design", monthly_usd="0.000050")
    # alternating: alice, bob, alice, bob; carol is in no group and unlimited
    jobs = [submit_job(owner, simulate=CALL) for owner in (user, other_user, user, other_user)]
    free = submit_job(outsider, simulate=CALL)

    run_worker()

    for job in [*jobs, free]:
        job.refresh_from_db()
    assert [job.status for job in jobs] == [JobStatus.SUCCEEDED] * 3 + [JobStatus.DEAD]
    assert (
        jobs[3].error_type == "BUDGET_EXCEEDED"
        and "monthly budget of group 'design' is exhausted" in jobs[3].error_message
    )
    assert free.status == JobStatus.SUCCEEDED
    assert spent(group=team) == 3 * CALL_COST
    assert (spent(user=user), spent(user=other_user), spent(user=outsider)) == (2 * CALL_COST, CALL_COST, CALL_COST)

    with pytest.raises(BudgetExceeded) as refused:
        submit_job(other_user, simulate=CALL)
    assert refused.value.details["scope"] == "group" and refused.value.details["name"] == "design"
    submit_job(outsider, simulate=CALL)  # not held by the team's limit


def test_the_default_holds_users_without_a_limit_of_their_own(user, other_user, run_worker, settings):
    settings.AI_BUDGET_DEFAULT_MONTHLY_USD = Decimal("0.000030")
    budgets.budget_set(user="bob", monthly_usd="1")  # bob's own limit replaces the default
    alice = [submit_job(user, simulate=CALL) for _ in range(3)]
    bob = [submit_job(other_user, simulate=CALL) for _ in range(3)]

    run_worker()

    assert [AIJob.objects.get(pk=job.pk).status for job in alice] == [JobStatus.SUCCEEDED] * 2 + [JobStatus.DEAD]
    assert [AIJob.objects.get(pk=job.pk).status for job in bob] == [JobStatus.SUCCEEDED] * 3
    with pytest.raises(BudgetExceeded) as refused:
        submit_job(user, simulate=CALL)
    assert refused.value.details["scope"] == "default" and refused.value.details["limit_usd"] == "0.00003"


def test_a_zero_limit_stops_everything_and_unlimited_users_are_not_held(user, other_user, run_worker):
    budgets.budget_set(user="alice", monthly_usd="0")
    with pytest.raises(BudgetExceeded):
        submit_job(user, simulate=CALL)
    job = submit_job(other_user, simulate=CALL)
    run_worker()
    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED and AIJob.objects.count() == 1
