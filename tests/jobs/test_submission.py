"""jobs.submission.job_submit: what it accepts, what it writes, and that the delivery follows the commit.

The API's own checks on top (JSON types, unknown fields, body size) are in tests/api/test_jobs_api.py; here
the service is called directly, as the commands and the admin call it.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connections, transaction

from aipb.exceptions import Conflict, InvalidInput
from jobs.models import MAX_ATTEMPTS_LIMIT, AIJob, JobStatus
from jobs.queues import all_queues, get_queue
from jobs.submission import MAX_OPTIONS_DEPTH, job_submit
from tests.factories import DEFAULT_PROMPT, submit_job


def deliveries_in_redis(conn) -> list[bytes]:
    """RQ's keys (the submission throttle's cache keys are not deliveries)."""
    return [key for key in conn.keys("*") if not key.startswith(b"aipb-cache:")]


@pytest.mark.django_db(transaction=True)
def test_a_submission_is_a_queued_row_and_one_delivery_named_after_it(user, redis_conn, settings):
    job = submit_job(user)

    row = AIJob.objects.get(id=job.id)
    assert (row.status, row.provider, row.model, row.priority) == (JobStatus.QUEUED, "local", "local-page", "normal")
    assert (row.attempts, row.max_attempts, row.budget_base) == (0, settings.AI_MAX_ATTEMPTS, 0)
    assert (row.deliveries, row.rq_job_id) == (1, str(job.id)), "the first delivery's RQ id is the job id"
    assert row.options == {} and row.request_fingerprint
    assert get_queue("ai-default").job_ids == [str(job.id)]


@pytest.mark.django_db(transaction=True)
def test_priority_maps_to_queues(user, redis_conn):
    high = submit_job(user, priority="high")
    low = submit_job(user, priority="low")
    assert get_queue("ai-high").job_ids == [str(high.id)]
    assert get_queue("ai-low").job_ids == [str(low.id)]


@pytest.mark.django_db(transaction=True)
def test_the_delivery_is_enqueued_only_when_the_row_commits(user, redis_conn):
    with pytest.raises(RuntimeError), transaction.atomic():
        submit_job(user)
        assert sum(queue.count for queue in all_queues()) == 0, "not before the commit"
        raise RuntimeError("the caller's transaction fails after the submission")

    assert AIJob.objects.count() == 0
    assert sum(queue.count for queue in all_queues()) == 0 and deliveries_in_redis(redis_conn) == []


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"prompt": ""}, "prompt must not be empty"),
        ({"prompt": " \n\t "}, "prompt must not be empty"),
        ({"prompt": "a\x00b"}, "NUL"),
        ({"prompt": "a\ud800b"}, "lone surrogates"),
        ({"prompt": "x" * 20_001}, "at most 20000 characters"),
        ({"provider": "cohere"}, "cohere"),
        ({"provider": "openai"}, "not configured"),
        ({"model": "gpt-5-ultra"}, "unknown model"),
        ({"provider": "simulated", "model": "local-page"}, "unknown model"),
        ({"priority": "urgent"}, "priority must be one of high, normal, low"),
        ({"max_attempts": 0}, f"max_attempts must be from 1 to {MAX_ATTEMPTS_LIMIT}"),
        ({"max_attempts": MAX_ATTEMPTS_LIMIT + 1}, f"max_attempts must be from 1 to {MAX_ATTEMPTS_LIMIT}"),
        ({"options": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}}, f"at most {MAX_OPTIONS_DEPTH} levels"),
        ({"options": {"blob": "y" * 20_000}}, "bytes of JSON"),
        ({"options": {"ratio": float("nan")}}, "finite"),
        ({"options": {"k\x00": 1}}, "NUL"),
        ({"options": {"simulate": {"error": "rate_limit"}}}, "only accepted with provider 'simulated'"),
        ({"provider": "simulated", "options": {"simulate": {"error": "boom"}}}, "options.simulate.error"),
        ({"provider": "simulated", "options": {"simulate": {"fail_attempts": 2}}}, "needs options.simulate.error"),
    ],
)
def test_bad_input_is_refused_and_writes_nothing(db, user, redis_conn, kwargs, fragment):
    kwargs.setdefault("prompt", DEFAULT_PROMPT)
    with pytest.raises(InvalidInput, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        job_submit(owner=user, **kwargs)
    assert AIJob.objects.count() == 0
    assert deliveries_in_redis(redis_conn) == []


def test_limits_are_the_settings(db, user, redis_conn, settings):
    settings.AI_MAX_PROMPT_CHARS = 10
    with pytest.raises(InvalidInput, match="at most 10 characters"):
        job_submit(owner=user, prompt="x" * 11)
    assert submit_job(user, prompt="x" * 10).prompt == "x" * 10
    settings.AI_MAX_ATTEMPTS = 5
    assert submit_job(user, prompt="y").max_attempts == 5


@pytest.mark.django_db(transaction=True)
def test_an_idempotent_replay_returns_the_first_job_and_enqueues_nothing(user, other_user, redis_conn):
    first, created = job_submit(owner=user, prompt="Same page", priority="high", idempotency_key="k-1")
    again, created_again = job_submit(owner=user, prompt="Same page", priority="high", idempotency_key="k-1")

    assert (created, created_again) == (True, False) and again.id == first.id
    # the row the submission's statement read back (jobs.admission) is the row as the ORM reads it
    stored = AIJob.objects.get(id=first.id)
    assert all(getattr(again, f.attname) == getattr(stored, f.attname) for f in AIJob._meta.concrete_fields)
    assert again.options == {} and again.created_at.tzinfo is not None and not again._state.adding
    assert AIJob.objects.count() == 1 and get_queue("ai-high").job_ids == [str(first.id)]
    with pytest.raises(Conflict, match="Idempotency-Key was already used with a different request body"):
        job_submit(owner=user, prompt="Another page", priority="high", idempotency_key="k-1")
    assert AIJob.objects.count() == 1
    # one key per owner: another owner's identical key is another job
    theirs, created = job_submit(owner=other_user, prompt="Same page", priority="high", idempotency_key="k-1")
    assert created and theirs.id != first.id


@pytest.mark.django_db(transaction=True)
def test_concurrent_submissions_with_one_key_make_one_job(user, redis_conn):
    """The unique (owner, key) constraint decides a race the first lookup cannot see: the loser returns the
    winner's job instead of failing."""
    for attempt in range(10):
        barrier = threading.Barrier(2)
        results: list[tuple[str, bool]] = []
        errors: list[BaseException] = []

        def submit(barrier=barrier, results=results, errors=errors, key=f"race-{attempt}"):
            try:
                barrier.wait()
                job, created = job_submit(owner=user, prompt="A page", idempotency_key=key)
                results.append((str(job.id), created))
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=submit) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len({job_id for job_id, _ in results}) == 1 and sorted(c for _, c in results) == [False, True]
    assert AIJob.objects.count() == 10
    assert sum(queue.count for queue in all_queues()) == 10, "each job delivered once"
