"""The jobs API's hot paths answer exactly what the plain ORM/DRF paths they replace answered (issue 23): the
submission's answer without reading the row back, jobs and tokens read with SQL written once per process
(aipb.api.PreparedGet), the output serializer built once, the throttle counted by one Lua script."""

from __future__ import annotations

import pickle

import pytest
from django.core.cache import cache
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from aipb.exceptions import NotFound
from jobs import selectors
from jobs.models import AIJob
from jobs.serializers import JobOutputSerializer, job_output
from tests.factories import AIJobFactory, JobAttemptFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

JOBS = "/api/ai/jobs"
BODY = {"prompt": "A page", "provider": "simulated", "model": "sim-small"}


def token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


def orm_job(job_id) -> AIJob:
    return AIJob.objects.select_related("owner").prefetch_related("attempt_set").get(id=job_id)


def test_the_answer_to_a_submission_is_the_job_as_stored(user, redis_conn):
    client = token_client(user)
    body = {**BODY, "options": {"zeta": [1, {"b": None}], "a": "é", "simulate": {"latency_ms": 5}}}
    created = client.post(JOBS, body, format="json", HTTP_IDEMPOTENCY_KEY="as-stored").json()

    assert created == JobOutputSerializer(orm_job(created["id"])).data
    assert created == client.get(f"{JOBS}/{created['id']}").json()


def test_job_output_is_the_serializer_output_with_and_without_attempts(user):
    fresh = AIJobFactory(owner=user, options={"k": {"n": 1}}, result=None)
    tried = JobAttemptFactory(job__owner=user, job__result={"title": "T", "sections": []}).job
    JobAttemptFactory(job=tried, number=2, outcome="failed", error_type="TIMEOUT")
    AIJob.objects.filter(id=tried.id).update(attempts=2)

    for job in (fresh, tried):
        reference = JobOutputSerializer(orm_job(job.id)).data
        assert job_output(selectors.job_get(user=user, job_id=job.id)) == reference
        assert list(job_output(selectors.job_get(user=user, job_id=job.id))) == list(reference)  # key order
    assert [a["number"] for a in job_output(selectors.job_get(user=user, job_id=tried.id))["attempt_history"]] == [1, 2]


def test_job_get_reads_what_the_orm_reads_and_only_for_its_owner_or_staff(user, other_user, staff_user):
    job = AIJobFactory(owner=user, options={"nested": {"list": [1, 2.5, "x"]}}, result={"title": "A"}, priority="high")
    got = selectors.job_get(user=user, job_id=job.id, with_attempts=False)
    reference = AIJob.objects.select_related("owner").get(id=job.id)
    fields = [f.attname for f in AIJob._meta.concrete_fields]
    assert [getattr(got, f) for f in fields] == [getattr(reference, f) for f in fields]
    assert got.owner == reference.owner and got.owner.username == "alice"
    assert got._state.adding is False and got._state.db == "default"

    assert selectors.job_get(user=staff_user, job_id=str(job.id)).id == job.id
    with pytest.raises(NotFound):
        selectors.job_get(user=other_user, job_id=job.id)
    with pytest.raises(NotFound):
        selectors.job_get(user=staff_user, job_id="7f1c1b7e-9a51-4c38-9f7b-4d7f4b0c2a11")


def test_token_authentication_answers_as_drfs(user, redis_conn):
    assert token_client(user).get(JOBS).status_code == 200

    unknown = APIClient()
    unknown.credentials(HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")
    response = unknown.get(JOBS)
    assert response.status_code == 401
    assert response.json()["error"] == {"type": "authentication_failed", "message": "Invalid token.", "details": None}

    inactive = UserFactory(username="gone", is_active=False)
    response = token_client(inactive).get(JOBS)
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "User inactive or deleted."


@pytest.fixture
def submit_rate(monkeypatch):
    cache.clear()
    yield lambda rate: monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"submit": rate})
    cache.clear()


def test_the_throttle_counts_a_sliding_window_in_one_key_that_expires(submit_rate, user, redis_conn):
    submit_rate("2/min")
    client = token_client(user)
    key = f"aipb-cache:1:throttle_submit_{user.pk}"
    # a count left by DRF's own throttle (a pickled history) before an upgrade is replaced, not an error
    redis_conn.set(key, pickle.dumps([1.0, 2.0]))

    assert [client.post(JOBS, BODY, format="json").status_code for _ in range(3)] == [201, 201, 429]
    assert redis_conn.type(key) == b"zset" and redis_conn.zcard(key) == 2  # refused hits are not counted
    assert 0 < redis_conn.pttl(key) <= 60_000
    response = client.post(JOBS, BODY, format="json")
    assert 55 <= int(response["Retry-After"]) <= 60  # until the first of the two leaves the window
    assert AIJob.objects.count() == 2
