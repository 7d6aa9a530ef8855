"""jobs.redis_state, what Redis says about work in flight: the workers on the AI queues by state, and whether a
delivery will still run (DeliveryView, which reconcile asks before it gives a waiting job a new delivery).

Redis holds what RQ itself writes: deliveries enqueued through jobs.queues, workers registered as RQ registers
them, and the moves a worker makes when it takes a delivery (off its list, marked started)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rq import Queue
from rq.job import Job

from jobs import queues, redis_state
from jobs.redis_state import STALE_HEARTBEAT_SECONDS, DeliveryView


def test_workers_by_state_from_rqs_registry(register_worker, redis_conn):
    register_worker("idle-1", "idle")
    register_worker("starting-1", "started")
    register_worker("busy-1", "busy")
    register_worker("busy-2", "busy")
    register_worker("suspended-1", "suspended")
    register_worker("other-app", "busy", queues=[Queue("some-other-app", connection=redis_conn)])
    gone = register_worker("gone-1", "idle")
    redis_conn.delete(gone.key)  # died without unregistering: its hash expired

    assert redis_state.worker_states(redis_conn) == {"idle": 2, "busy": 2, "suspended": 1}


def test_no_workers_reads_zero_for_every_state(redis_conn):
    assert redis_state.worker_states(redis_conn) == {"idle": 0, "busy": 0, "suspended": 0}


def test_workers_list_shows_only_the_ai_queues_workers(register_worker, redis_conn):
    register_worker("b-worker", "busy")
    register_worker("a-worker", "idle", queues=[queues.get_queue("ai-low")])
    register_worker("other-app", "busy", queues=[Queue("some-other-app", connection=redis_conn)])

    listed = redis_state.workers_list(redis_conn)

    assert [w["name"] for w in listed] == ["a-worker", "b-worker"]
    assert listed[0]["queues"] == ["ai-low"] and listed[1]["queues"] == list(queues.QUEUE_ORDER)
    assert {w["state"] for w in listed} == {"idle", "busy"} and all(w["current_job"] is None for w in listed)


# --------------------------------------------------------------------------- will this delivery still run?


@pytest.fixture
def view(redis_conn):
    def make(*, now: datetime | None = None, grace: float = 30) -> DeliveryView:
        return DeliveryView(redis_conn, now=now or datetime.now(UTC), grace_seconds=grace)

    return make


def deliver(rq_job_id: str, *, delay: float = 0.0) -> None:
    queues.enqueue_delivery(job_id=rq_job_id.split("_")[0], rq_job_id=rq_job_id, priority="normal", delay=delay)


def take(redis_conn, rq_job_id: str, *, started: bool) -> None:
    """What a worker does with a delivery: pop it off its list and, unless it dies first, mark it started."""
    assert redis_conn.lrem(queues.list_key("ai-default"), 1, rq_job_id) == 1
    if started:
        with redis_conn.pipeline() as pipe:
            Job.fetch(rq_job_id, connection=redis_conn).prepare_for_execution("worker-1", pipe)
            pipe.execute()


def test_a_delivery_waiting_in_its_queue_will_run_and_a_forgotten_one_will_not(redis_conn, view):
    deliver("waits")
    assert view().alive(["waits", "forgotten"]) == {"waits"}


def test_a_delivery_popped_by_a_worker_that_died_before_starting_it_is_lost(redis_conn, view):
    """RQ still says "queued", but it is in no queue: nothing will ever pop it. Judged only after a second look,
    since a live worker holds it in exactly this state for a moment between its BLPOP and marking it started."""
    deliver("popped")
    take(redis_conn, "popped", started=False)

    assert view().alive(["popped"]) == set()


def test_a_started_delivery_is_alive_while_its_worker_beats(redis_conn, view):
    deliver("running")
    take(redis_conn, "running", started=True)
    now = datetime.now(UTC)

    assert view(now=now).alive(["running"]) == {"running"}
    later = now + timedelta(seconds=STALE_HEARTBEAT_SECONDS + 5)
    assert view(now=later).alive(["running"]) == set(), "its worker stopped beating: it died"


def test_a_scheduled_delivery_is_alive_until_it_is_overdue(redis_conn, view):
    deliver("later", delay=60)
    now = datetime.now(UTC)

    assert view(now=now).alive(["later"]) == {"later"}
    # due 60 s from now; overdue by more than the grace period 95 s from now: no scheduler is moving it
    assert view(now=now + timedelta(seconds=80), grace=30).alive(["later"]) == {"later"}
    assert view(now=now + timedelta(seconds=95), grace=30).alive(["later"]) == set()


def test_one_view_judges_many_deliveries_of_several_kinds(redis_conn, view):
    deliver("w1")
    deliver("w2")
    deliver("s1", delay=60)
    deliver("r1")
    take(redis_conn, "r1", started=True)
    deliver("p1")
    take(redis_conn, "p1", started=False)

    assert view().alive(["w1", "w2", "s1", "r1", "p1", "gone"]) == {"w1", "w2", "s1", "r1"}
