"""aipb.prepared: the hot paths' statements are prepared once per connection, and nothing else is."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.db import connection

from jobs import transitions
from jobs.models import AIJob, AttemptOutcome, JobAttempt, JobStatus
from tests.factories import submit_job


def _prepared() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.django_db(transaction=True)
def test_a_submission_prepares_its_admission_once_and_reuses_it(user, redis_conn):
    connection.close()  # a new connection: no statement of another test's
    jobs = [submit_job(user, prompt=f"page {i}") for i in range(3)]
    assert AIJob.objects.filter(id__in=[j.id for j in jobs], status=JobStatus.QUEUED).count() == 3
    statements = _prepared()
    assert len([s for s in statements if "INSERT INTO" in s and "backlog" in s]) == 1, statements
    # the ORM's statements (the count above) stay unprepared
    assert all("backlog" in s for s in statements), statements


@pytest.mark.django_db(transaction=True)
def test_a_claim_and_an_end_are_prepared_and_write_their_nulls(user, redis_conn):
    connection.close()
    job = submit_job(user)
    claimed = transitions.job_claim(job_id=str(job.id), rq_job_id=job.rq_job_id)
    assert claimed is not None and claimed.status == JobStatus.RUNNING
    record = transitions.AttemptRecord(
        number=1,
        started_at=claimed.started_at,
        finished_at=claimed.started_at,
        latency_ms=None,  # nulls of a typed column, sent as unknown: the INSERT's casts type them
        usage=None,
        request_id=None,
        validation_passed=None,
    )
    assert transitions.job_succeed(job=claimed, record=record, page={"title": "t", "sections": []})
    [attempt] = JobAttempt.objects.filter(job_id=job.id)
    assert (attempt.number, attempt.outcome, attempt.latency_ms) == (1, AttemptOutcome.SUCCEEDED, None)
    assert AIJob.objects.get(id=job.id).status == JobStatus.SUCCEEDED
    statements = _prepared()
    assert any(s.lstrip().startswith("UPDATE jobs_aijob") for s in statements), statements
    assert any("INSERT INTO" in s and "FROM moved" in s for s in statements), statements


@pytest.mark.django_db(transaction=True)
def test_turned_off_nothing_is_prepared(user, redis_conn, settings):
    settings.DATABASE_PREPARED_STATEMENTS = False
    connection.close()
    submit_job(user)
    assert _prepared() == []


def _settings_in_child(**env: str) -> subprocess.CompletedProcess:
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(settings.DATABASES['default']['OPTIONS'].get('prepare_threshold'))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "aipb.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_setting_sets_the_threshold_and_refuses_a_non_boolean():
    assert _settings_in_child().stdout.strip() == str(2**31 - 1)
    assert _settings_in_child(DATABASE_PREPARED_STATEMENTS="0").stdout.strip() == "None"
    bad = _settings_in_child(DATABASE_PREPARED_STATEMENTS="sometimes")
    assert bad.returncode != 0
    assert "DATABASE_PREPARED_STATEMENTS must be a boolean" in bad.stderr and "'sometimes'" in bad.stderr
