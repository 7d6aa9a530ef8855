"""jobs.admission.attempt_claim: an attempt's claim and its owner's limits in one statement, so the budget check
before the provider call costs none of its own."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext

from jobs import transitions
from jobs.admission import attempt_claim
from jobs.errors import BudgetExceeded
from jobs.models import AIJob, JobStatus
from tests.factories import submit_job
from usage import budgets
from usage.budgets import Scope


def test_a_claim_reads_the_owners_limits_in_its_one_statement(user, redis_conn, settings):
    settings.AI_BUDGET_DEFAULT_MONTHLY_USD = None
    team = Group.objects.create(name="design")
    user.groups.add(team, Group.objects.create(name="ops"))  # ops has no limit: not one of the user's limits
    budgets.budget_set(user="alice", monthly_usd="5")
    job = submit_job(user, simulate={})
    budgets.budget_set(group="design", monthly_usd="0")  # reached after the submission, before the claim

    with CaptureQueriesContext(connection) as statements:
        claim = attempt_claim(job_id=str(job.id), rq_job_id=job.rq_job_id)
    assert len(statements) == 1, [q["sql"] for q in statements]

    assert claim.job.id == job.id and claim.job.status == JobStatus.RUNNING and claim.job.attempts == 1
    assert AIJob.objects.get(id=job.id).status == JobStatus.RUNNING
    assert claim.limits == budgets.budget_limits(user_id=user.pk)
    assert [(limit.scope, limit.name) for limit in claim.limits] == [(Scope.USER, "alice"), (Scope.GROUP, "design")]
    with pytest.raises(BudgetExceeded, match="the monthly budget of group 'design' is exhausted"):
        budgets.budget_enforce(claim.limits, stage="pipeline")


def test_an_owner_held_by_nothing_claims_with_no_limits_and_the_default_holds_one_without_their_own(
    user, redis_conn, settings
):
    settings.AI_BUDGET_DEFAULT_MONTHLY_USD = None
    job = submit_job(user, simulate={})
    claim = attempt_claim(job_id=str(job.id), rq_job_id=job.rq_job_id)
    assert claim.limits == []

    settings.AI_BUDGET_DEFAULT_MONTHLY_USD = budgets.usd_parse("2")
    other = submit_job(user, simulate={}, prompt="another page")
    [limit] = attempt_claim(job_id=str(other.id), rq_job_id=other.rq_job_id).limits
    assert (limit.scope, limit.limit_usd, limit.exhausted) == (Scope.DEFAULT, budgets.usd_parse("2"), False)


def test_a_stale_or_second_delivery_claims_nothing(user, redis_conn):
    job = submit_job(user, simulate={})
    assert attempt_claim(job_id=str(job.id), rq_job_id="not-its-delivery") is None
    assert AIJob.objects.get(id=job.id).status == JobStatus.QUEUED

    assert attempt_claim(job_id=str(job.id), rq_job_id=job.rq_job_id) is not None
    assert attempt_claim(job_id=str(job.id), rq_job_id=job.rq_job_id) is None  # running now
    assert transitions.job_claim(job_id=str(job.id), rq_job_id=job.rq_job_id) is None
    row = AIJob.objects.get(id=job.id)
    assert (row.status, row.attempts) == (JobStatus.RUNNING, 1)
