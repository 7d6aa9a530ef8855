"""jobs.fairness: priority by permission, retries against the submission throttle, the per-user cap on waiting
jobs, and the per-user cap on deliveries in flight (RQ's concurrency-keyed RateLimit), through its faults: a lost
delivery, a Redis flush. Real Postgres, Redis and RQ workers; the fairness scenario with real processes is in
tests/e2e/test_fairness_drills.py."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Group, Permission
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle
from rq.job import Job

from aipb.exceptions import TooManyQueued
from aipb.settings import _in_flight_overrides
from bench.counting import Counter
from dlq.models import DeadLetter
from jobs import fairness, pipeline, redis_state, transitions
from jobs.models import AIJob, JobAttempt, JobStatus
from jobs.queue_control import queue_clear
from jobs.queues import all_queues
from jobs.recovery import jobs_reconcile
from jobs.threaded_worker import AIPBThreadedWorker
from jobs.worker import AIPBSimpleWorker
from tests.factories import AIJobFactory, submit_job

JOBS = "/api/ai/jobs"
SIM = {"provider": "simulated", "model": "sim-small"}


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "details"}
    return body["error"]


def deliveries(conn) -> int:
    """RQ job hashes in Redis: every delivery, queued, held back or scheduled."""
    return len(conn.keys("rq:job:*"))


def grant_high(user) -> None:
    user.user_permissions.add(Permission.objects.get(codename="submit_high_priority"))


# --- priority by permission ---


@pytest.mark.django_db(transaction=True)
def test_high_priority_is_403_for_an_ordinary_user_and_writes_nothing(api, user, redis_conn):
    response = api.post(JOBS, {"prompt": "me first", "priority": "high", **SIM}, format="json")

    error = error_of(response, 403)
    assert error["type"] == "permission_denied"
    assert error["details"] == {"priority": "high", "permission": "jobs.submit_high_priority"}
    assert AIJob.objects.count() == 0 and deliveries(redis_conn) == 0
    # normal and low need nothing
    for priority in ("normal", "low"):
        assert api.post(JOBS, {"prompt": "p", "priority": priority, **SIM}, format="json").status_code == 201


@pytest.mark.django_db(transaction=True)
def test_high_priority_with_the_permission_a_group_or_staff(api, user, other_user, staff_api, redis_conn):
    grant_high(user)
    assert api.post(JOBS, {"prompt": "mine", "priority": "high", **SIM}, format="json").status_code == 201
    assert staff_api.post(JOBS, {"prompt": "ops", "priority": "high", **SIM}, format="json").status_code == 201

    team = Group.objects.create(name="urgent")
    team.permissions.add(Permission.objects.get(codename="submit_high_priority"))
    other_user.groups.add(team)
    bob = APIClient()
    bob.force_authenticate(other_user)
    assert bob.post(JOBS, {"prompt": "bob", "priority": "high", **SIM}, format="json").status_code == 201
    assert set(AIJob.objects.values_list("priority", flat=True)) == {"high"}
    assert all_queues()[0].count == 3  # all on ai-high


@pytest.mark.django_db(transaction=True)
def test_a_bad_priority_is_still_a_400(api, redis_conn):
    assert error_of(api.post(JOBS, {"prompt": "p", "priority": "urgent"}, format="json"), 400)["type"] == (
        "validation_error"
    )
    assert AIJob.objects.count() == 0


# --- retries count against the submission throttle ---


@pytest.fixture
def submit_rate(monkeypatch):
    def set_rate(rate: str) -> None:
        monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"submit": rate})

    cache.clear()
    yield set_rate
    cache.clear()


def _dead_job(owner) -> AIJob:
    job = submit_job(owner, simulate={"fail_attempts": 100, "error": "auth"}, max_attempts=1)
    assert pipeline.run_attempt(str(job.id), job.rq_job_id).startswith("dead")
    return AIJob.objects.get(id=job.id)


@pytest.mark.django_db(transaction=True)
def test_six_retries_of_a_dead_job_at_3_per_minute_are_not_all_accepted(submit_rate, api, user, redis_conn):
    submit_rate("3/min")
    job = _dead_job(user)  # submitted through the service: the throttle has counted nothing yet
    answers = []
    for _ in range(6):
        answers.append(api.post(f"{JOBS}/{job.id}/retry").status_code)
        fresh = AIJob.objects.get(id=job.id)
        if fresh.status == JobStatus.QUEUED:  # run it to death again, as the hostile user did
            assert pipeline.run_attempt(str(job.id), fresh.rq_job_id).startswith("dead")

    assert answers == [202, 202, 202, 429, 429, 429]
    job.refresh_from_db()
    assert job.status == JobStatus.DEAD and job.attempts == 4  # one + three retries: no more provider calls
    assert JobAttempt.objects.filter(job=job).count() == 4


@pytest.mark.django_db(transaction=True)
def test_a_throttled_retry_changes_nothing_and_shares_the_count_with_submissions(submit_rate, api, user, redis_conn):
    submit_rate("2/min")
    job = _dead_job(user)
    assert api.post(JOBS, {"prompt": "one", **SIM}, format="json").status_code == 201
    assert api.post(JOBS, {"prompt": "two", **SIM}, format="json").status_code == 201
    before = (AIJob.objects.get(id=job.id).deliveries, deliveries(redis_conn))

    response = api.post(f"{JOBS}/{job.id}/retry")

    error = error_of(response, 429)
    assert error["type"] == "throttled" and 1 <= int(response["Retry-After"]) <= 60
    job.refresh_from_db()
    assert job.status == JobStatus.DEAD and (job.deliveries, deliveries(redis_conn)) == before
    assert DeadLetter.objects.get(job_uuid=job.id).status == "open"


@pytest.mark.django_db(transaction=True)
def test_dlq_retries_count_against_the_staff_members_throttle(submit_rate, staff_api, user, redis_conn):
    submit_rate("1/min")
    first, second = _dead_job(user), _dead_job(user)
    entries = [DeadLetter.objects.get(job_uuid=j.id) for j in (first, second)]
    assert staff_api.post(f"/api/ai/dlq/{entries[0].id}/retry").status_code == 202
    error = error_of(staff_api.post(f"/api/ai/dlq/{entries[1].id}/retry"), 429)
    assert error["type"] == "throttled"
    assert AIJob.objects.get(id=second.id).status == JobStatus.DEAD
    assert DeadLetter.objects.get(id=entries[1].id).status == "open"


def test_the_default_throttle_is_a_per_user_rate_that_bites():
    # every job of a batch counts: one full batch must fit in the burst, and not much more (6000/min never bit)
    count, per = django_settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]["submit"].split("/")
    assert per == "min" and django_settings.AI_BATCH_MAX_JOBS <= int(count) <= 2 * django_settings.AI_BATCH_MAX_JOBS


# --- the per-user cap on waiting jobs ---


@pytest.mark.django_db(transaction=True)
def test_past_the_waiting_cap_a_submission_is_429_without_retry_after_and_writes_nothing(
    settings, api, other_user, redis_conn
):
    settings.AI_USER_MAX_QUEUED = 2
    for n in range(2):
        assert api.post(JOBS, {"prompt": f"p{n}", **SIM}, format="json").status_code == 201
    before = (AIJob.objects.count(), deliveries(redis_conn))

    response = api.post(JOBS, {"prompt": "one too many", **SIM}, format="json")

    error = error_of(response, 429)
    assert error["type"] == "too_many_queued"
    assert error["details"] == {"limit": 2, "waiting": 2, "adding": 1}
    assert "Retry-After" not in response
    assert (AIJob.objects.count(), deliveries(redis_conn)) == before
    # the cap is per user; and a canceled job no longer waits
    bob = APIClient()
    bob.force_authenticate(other_user)
    assert bob.post(JOBS, {"prompt": "bob's", **SIM}, format="json").status_code == 201
    waiting = AIJob.objects.filter(owner__username="alice").first()
    assert api.post(f"{JOBS}/{waiting.id}/cancel").status_code == 200
    assert api.post(JOBS, {"prompt": "now it fits", **SIM}, format="json").status_code == 201


@pytest.mark.django_db(transaction=True)
def test_finished_jobs_do_not_count_and_zero_means_no_cap(settings, user, redis_conn):
    settings.AI_USER_MAX_QUEUED = 1
    job = submit_job(user, simulate={})
    assert pipeline.run_attempt(str(job.id), job.rq_job_id) == "succeeded"
    submit_job(user, simulate={})  # the succeeded one does not count
    with pytest.raises(TooManyQueued):
        submit_job(user, simulate={})
    settings.AI_USER_MAX_QUEUED = 0
    submit_job(user, simulate={})
    assert AIJob.objects.filter(status=JobStatus.QUEUED).count() == 2


@pytest.mark.django_db(transaction=True)
def test_the_waiting_count_is_one_statement_bounded_by_limit_on_the_partial_index(settings, user):
    settings.AI_USER_MAX_QUEUED = 1000
    # a user with a long history and a few jobs waiting: the count must not walk the history
    AIJobFactory.create_batch(2000, owner=user, status=JobStatus.SUCCEEDED)
    AIJobFactory.create_batch(3, owner=user, status=JobStatus.QUEUED)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_aijob")
    with CaptureQueriesContext(connection) as queries:
        fairness.queued_check(owner=user)
    assert len(queries) == 1
    sql = queries[0]["sql"]
    assert "LIMIT 1000" in sql and "COUNT(*)" in sql
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "aijob_owner_waiting" in plan, plan


@pytest.mark.django_db(transaction=True)
def test_a_submission_counts_waiting_jobs_inside_its_insert_on_the_partial_index(settings, user, redis_conn):
    settings.AI_USER_MAX_QUEUED = 1000
    AIJobFactory.create_batch(2000, owner=user, status=JobStatus.SUCCEEDED)
    AIJobFactory.create_batch(3, owner=user, status=JobStatus.QUEUED)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_aijob")
    executed = []

    def record(execute, sql, params, many, context):
        executed.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        submit_job(user, simulate={})
    [(sql, params)] = executed  # the admission statement, prepared: its text has placeholders, not values
    sql = connection.ops.compose_sql(sql, params)
    assert "INSERT" in sql and "LIMIT 1000" in sql
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql)  # not run: EXPLAIN plans the INSERT without making the row
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "aijob_owner_waiting" in plan, plan
    assert AIJob.objects.filter(status=JobStatus.QUEUED).count() == 4


# --- the per-user cap on deliveries in flight ---


@pytest.fixture
def in_flight(settings):
    fairness.overrides_forget()
    settings.AI_USER_MAX_IN_FLIGHT = 2
    yield settings
    fairness.overrides_forget()


def queued_ids(conn) -> list[str]:
    return [rq_id for queue in all_queues() for rq_id in queue.get_job_ids()]


@pytest.mark.django_db(transaction=True)
def test_a_users_deliveries_past_the_cap_wait_outside_the_queue(in_flight, user, other_user, redis_conn):
    mine = [submit_job(user, simulate={}) for _ in range(5)]
    theirs = submit_job(other_user, simulate={})

    # two of alice's are on the queue, three held back; bob's went straight on, behind just those two
    assert queued_ids(redis_conn) == [mine[0].rq_job_id, mine[1].rq_job_id, theirs.rq_job_id]
    assert fairness.slots_held(redis_conn, user.pk) == {"admitted": 2, "held": 3}
    assert fairness.slots_held(redis_conn, other_user.pk) == {"admitted": 1, "held": 0}
    # reconcile sees the held deliveries as alive: it re-delivers nothing
    assert jobs_reconcile(grace_seconds=0).requeued == []
    assert fairness.slots_held(redis_conn, user.pk) == {"admitted": 2, "held": 3}


@pytest.mark.django_db(transaction=True)
def test_slots_free_as_deliveries_end_and_every_job_runs(in_flight, user, other_user, redis_conn, run_worker):
    jobs = [submit_job(user, simulate={}) for _ in range(5)] + [submit_job(other_user, simulate={})]

    run_worker(worker_class=AIPBSimpleWorker)

    assert set(AIJob.objects.values_list("status", flat=True)) == {JobStatus.SUCCEEDED}
    assert JobAttempt.objects.filter(job__in=jobs).count() == 6
    for owner in (user, other_user):
        assert fairness.slots_held(redis_conn, owner.pk) == {"admitted": 0, "held": 0}


@pytest.mark.django_db(transaction=True)
def test_the_threaded_worker_never_runs_more_than_the_cap_of_one_user(in_flight, user, redis_conn, run_worker):
    jobs = [submit_job(user, simulate={"latency_ms": 300}) for _ in range(6)]

    run_worker(worker_class=AIPBThreadedWorker, timeout=60)

    attempts = list(JobAttempt.objects.filter(job__in=jobs).values_list("started_at", "finished_at"))
    assert len(attempts) == 6
    overlap = max(sum(1 for s, f in attempts if s <= start < f) for start, _ in attempts)
    assert overlap <= 2, attempts


@pytest.mark.django_db(transaction=True)
def test_a_delivery_lost_after_its_pop_gives_its_slot_back_at_reconcile(in_flight, user, redis_conn):
    jobs = [submit_job(user, simulate={}) for _ in range(3)]
    # a worker SIGKILLed right after BLPOP: the delivery is "queued" in no queue, holding a slot
    lost = redis_conn.lpop("rq:queue:ai-default").decode()
    assert lost == jobs[0].rq_job_id
    assert fairness.slots_held(redis_conn, user.pk) == {"admitted": 2, "held": 1}

    report = jobs_reconcile(grace_seconds=0)

    assert report.requeued == [str(jobs[0].id)]  # a new delivery for the job
    # the lost slot is released and the held delivery promoted; the new delivery waits for a slot
    assert fairness.slots_held(redis_conn, user.pk) == {"admitted": 2, "held": 1}
    # one of the held deliveries took the freed slot (RQ promotes the oldest, by whole seconds)
    queued = queued_ids(redis_conn)
    assert len(queued) == 2 and jobs[1].rq_job_id in queued and jobs[0].rq_job_id not in queued


@pytest.mark.django_db(transaction=True)
def test_a_killed_workers_started_delivery_gives_its_slot_back(in_flight, user, redis_conn):
    jobs = [submit_job(user, simulate={}) for _ in range(3)]
    started = Job.fetch(jobs[0].rq_job_id, connection=redis_conn)
    redis_conn.lrem("rq:queue:ai-default", 1, started.id)
    stale = datetime.now(UTC) - timedelta(seconds=redis_state.STALE_HEARTBEAT_SECONDS + 60)
    started.set_status("started")
    redis_conn.hset(started.key, mapping={"last_heartbeat": stale.strftime("%Y-%m-%dT%H:%M:%S.%fZ")})

    jobs_reconcile(grace_seconds=0)

    assert fairness.slots_held(redis_conn, user.pk)["admitted"] == 2
    # one of the held deliveries took the freed slot (RQ promotes the oldest, by whole seconds)
    queued = queued_ids(redis_conn)
    assert len(queued) == 2 and jobs[1].rq_job_id in queued and jobs[0].rq_job_id not in queued


@pytest.mark.django_db(transaction=True)
def test_after_a_redis_flush_reconcile_redelivers_through_the_cap(in_flight, user, redis_conn, run_worker):
    jobs = [submit_job(user, simulate={}) for _ in range(4)]
    redis_conn.flushdb()

    report = jobs_reconcile(grace_seconds=0)

    assert sorted(report.requeued) == sorted(str(j.id) for j in jobs)
    assert fairness.slots_held(redis_conn, user.pk) == {"admitted": 2, "held": 2}
    run_worker(worker_class=AIPBSimpleWorker)
    assert set(AIJob.objects.values_list("status", flat=True)) == {JobStatus.SUCCEEDED}
    assert fairness.slots_held(redis_conn, user.pk) == {"admitted": 0, "held": 0}


@pytest.mark.django_db(transaction=True)
def test_retries_and_throttled_deliveries_go_through_the_cap_too(in_flight, user, redis_conn, run_worker):
    jobs = [submit_job(user, simulate={"fail_attempts": 1, "error": "unavailable"}) for _ in range(4)]

    run_worker(worker_class=AIPBSimpleWorker, timeout=60)

    assert set(AIJob.objects.values_list("status", flat=True)) == {JobStatus.SUCCEEDED}
    assert JobAttempt.objects.filter(job__in=jobs).count() == 8
    assert fairness.slots_held(redis_conn, user.pk) == {"admitted": 0, "held": 0}


@pytest.mark.django_db
def test_overrides_per_user_and_group(settings, user, other_user, staff_user):
    fairness.overrides_forget()
    settings.AI_USER_MAX_IN_FLIGHT = 3
    settings.AI_USER_MAX_IN_FLIGHT_OVERRIDES = {"user": {"alice": 0}, "group": {"batch": 1, "bulk": 2}}
    for name in ("batch", "bulk"):
        Group.objects.create(name=name)
    other_user.groups.add(*Group.objects.all())
    staff_user.groups.add(Group.objects.get(name="batch"))
    user.groups.add(Group.objects.get(name="batch"))
    try:
        assert fairness.in_flight_cap(user.pk) == 0  # her own entry wins over her group's: no cap
        assert fairness.rate_limit_for(user.pk) is None
        assert fairness.in_flight_cap(other_user.pk) == 2  # the largest of his groups'
        assert fairness.in_flight_cap(staff_user.pk) == 1
        assert fairness.in_flight_cap(10_000_000) == 3  # nobody named: the default
        limit = fairness.rate_limit_for(other_user.pk)
        assert (limit.key, limit.concurrency) == (f"aipb-user-{other_user.pk}", 2)
    finally:
        fairness.overrides_forget()


@pytest.mark.parametrize(
    "raw", ["alice", "alice=", "alice=-1", "=3", "group:=2", "alice=two", "alice=1.5"], ids=lambda r: r or "empty"
)
def test_malformed_overrides_stop_the_settings(raw):
    with pytest.raises(ImproperlyConfigured, match="AI_USER_MAX_IN_FLIGHT_OVERRIDES"):
        _in_flight_overrides(raw)


def test_overrides_parse():
    assert _in_flight_overrides(" alice=8, group:batch team=2 ,bob=0") == {
        "user": {"alice": 8, "bob": 0},
        "group": {"batch team": 2},
    }
    assert _in_flight_overrides("") == {"user": {}, "group": {}}


@pytest.mark.django_db(transaction=True)
def test_with_the_cap_on_a_submission_still_costs_two_redis_round_trips(in_flight, user, other_user, redis_conn):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    client.post(JOBS, {"prompt": "warm", **SIM}, format="json")
    with Counter(keep_log=True) as c:
        response = client.post(JOBS, {"prompt": "counted", **SIM}, format="json")
    assert response.status_code == 201
    # the throttle's script, then the delivery saved as rate_limited and RQ's promotion script in one pipeline
    assert c.counts.redis_round_trips == 2, c.counts.redis_log
    assert c.counts.sql == 2  # the token, then the INSERT with the waiting count and the limits in it (jobs.admission)

    # a Redis that lost its scripts (restarted): the delivery is saved, then promoted on its own
    redis_conn.script_flush()
    bob = APIClient()
    bob.force_authenticate(other_user)
    job_id = bob.post(JOBS, {"prompt": "after a restart", **SIM}, format="json").json()["id"]
    assert AIJob.objects.get(id=job_id).rq_job_id in queued_ids(redis_conn)
    assert fairness.slots_held(redis_conn, other_user.pk) == {"admitted": 1, "held": 0}


@pytest.mark.django_db(transaction=True)
def test_a_slot_whose_job_moved_on_is_released_before_its_heartbeat_goes_stale(in_flight, user, redis_conn):
    jobs = [submit_job(user, simulate={}) for _ in range(3)]
    # a worker took the first delivery, claimed the job and was SIGKILLed mid-call: started, heartbeat fresh
    in_flight.AI_LEASE_SECONDS = 0.01
    started = Job.fetch(jobs[0].rq_job_id, connection=redis_conn)
    redis_conn.lrem("rq:queue:ai-default", 1, started.id)
    started.set_status("started")
    redis_conn.hset(started.key, mapping={"last_heartbeat": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")})
    assert transitions.job_claim(job_id=str(jobs[0].id), rq_job_id=started.id) is not None
    time.sleep(0.05)

    report = jobs_reconcile(grace_seconds=0)  # lease recovery: the job gets a new delivery (held: no slot free)
    assert report.recovered == [str(jobs[0].id)]
    assert fairness.slots_held(redis_conn, user.pk) == {"admitted": 2, "held": 2}
    jobs_reconcile(grace_seconds=0)  # the killed worker's delivery no longer carries its job: its slot is freed

    assert fairness.slots_held(redis_conn, user.pk) == {"admitted": 2, "held": 1}
    # one of the held deliveries took the freed slot (RQ promotes the oldest, by whole seconds)
    queued = queued_ids(redis_conn)
    assert len(queued) == 2 and jobs[1].rq_job_id in queued and jobs[0].rq_job_id not in queued


@pytest.mark.django_db(transaction=True)
def test_clearing_the_waiting_work_cancels_the_held_deliveries_too(in_flight, user, redis_conn):
    jobs = [submit_job(user, simulate={}) for _ in range(5)]
    assert fairness.slots_held(redis_conn, user.pk) == {"admitted": 2, "held": 3}

    report = queue_clear(status="waiting")

    assert sorted(report.canceled) == sorted(str(j.id) for j in jobs) and report.removed == 5
    assert set(AIJob.objects.values_list("status", flat=True)) == {JobStatus.CANCELED}
    assert fairness.slots_held(redis_conn, user.pk)["held"] == 0 and deliveries(redis_conn) == 0
    jobs_reconcile(grace_seconds=0)  # the cleared deliveries' slots
    assert fairness.slots_held(redis_conn, user.pk) == {"admitted": 0, "held": 0}
