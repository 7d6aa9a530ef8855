"""The scheduler's tick and one firing: exactly once per instant, missed firings coalesced, pause and resume,
run-now, refused submissions recorded, and a fired job run to success by a real RQ worker."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.models import AIJob, Batch, BatchStatus, JobStatus
from monitoring import metrics
from schedules import services
from schedules.cron import next_fire
from schedules.firing import schedule_fire
from schedules.models import FiringOutcome, FiringTrigger, Schedule, ScheduleFiring
from schedules.scheduler import scheduler_tick


def firings_counted(outcome: str) -> float:
    return metrics.SCHEDULE_FIRINGS.labels(outcome)._value.get()


def test_a_due_schedule_fires_once_and_moves_to_its_next_instant(
    make_schedule, redis_conn, django_capture_on_commit_callbacks
):
    schedule = make_schedule(cron="*/5 * * * *", prompt="weekly ride page", priority="high", max_attempts=2)
    due = schedule.next_fire_at
    submitted_before = firings_counted("submitted")

    with django_capture_on_commit_callbacks(execute=True):
        report = scheduler_tick(now=due)

    assert [f["outcome"] for f in report.fired] == ["submitted"]
    job = AIJob.objects.get()
    assert (job.owner, job.prompt, job.provider, job.priority, job.max_attempts, job.status) == (
        schedule.owner,
        "weekly ride page",
        "local",
        "high",
        2,
        JobStatus.QUEUED,
    )
    firing = ScheduleFiring.objects.get()
    assert (firing.scheduled_for, firing.trigger, firing.outcome, firing.job_id) == (
        due,
        FiringTrigger.CRON,
        FiringOutcome.SUBMITTED,
        job.id,
    )
    schedule.refresh_from_db()
    assert schedule.next_fire_at == due + timedelta(minutes=5)
    assert schedule.last_fired_at == due
    assert firings_counted("submitted") == submitted_before + 1

    # the same tick again finds nothing due
    assert scheduler_tick(now=due).fired == []
    assert AIJob.objects.count() == 1


def test_one_instant_fired_twice_makes_one_job(make_schedule, redis_conn):
    """The firing key: a second scheduler holding the same (stale) schedule finds the instant fired and skips."""
    schedule = make_schedule()
    stale = Schedule.objects.select_related("owner").get(pk=schedule.pk)
    due = schedule.next_fire_at
    skipped_before = firings_counted("skipped")

    first = schedule_fire(schedule=schedule, scheduled_for=due, trigger=FiringTrigger.CRON, now=due)
    second = schedule_fire(schedule=stale, scheduled_for=due, trigger=FiringTrigger.CRON, now=due)

    assert first[0] == "submitted" and second == ("skipped", None)
    assert AIJob.objects.count() == 1
    assert ScheduleFiring.objects.count() == 1
    assert firings_counted("skipped") == skipped_before + 1


def test_missed_firings_during_downtime_coalesce_into_one(make_schedule, redis_conn):
    schedule = make_schedule(cron="*/5 * * * *")
    due = schedule.next_fire_at
    back_at = due + timedelta(hours=3, minutes=2)  # 36 instants missed while no scheduler ran

    report = scheduler_tick(now=back_at)

    assert len(report.fired) == 1
    assert AIJob.objects.count() == 1
    assert ScheduleFiring.objects.get().scheduled_for == due  # the first instant missed names the firing
    schedule.refresh_from_db()
    assert schedule.next_fire_at == back_at + timedelta(minutes=3)  # the first instant after the restart
    assert scheduler_tick(now=back_at).fired == []


def test_a_paused_schedule_does_not_fire_and_resumes_from_now(make_schedule, redis_conn):
    schedule = make_schedule(cron="*/5 * * * *")
    due = schedule.next_fire_at

    paused = services.schedule_pause(schedule_id=schedule.id)
    assert (paused.paused, paused.next_fire_at) == (True, None)
    assert scheduler_tick(now=due + timedelta(hours=1)).fired == []
    assert not AIJob.objects.exists()

    resumed = services.schedule_resume(schedule_id=schedule.id)
    assert resumed.paused is False
    assert resumed.next_fire_at == next_fire("*/5 * * * *", "UTC", after=timezone.now())
    assert resumed.next_fire_at > timezone.now()  # what fell due while paused is not made up


def test_a_schedule_paused_while_a_scheduler_held_it_is_not_fired(make_schedule, redis_conn):
    schedule = make_schedule()
    held = Schedule.objects.select_related("owner").get(pk=schedule.pk)  # read by a tick ...
    services.schedule_pause(schedule_id=schedule.id)  # ... then paused before it fired

    assert schedule_fire(
        schedule=held, scheduled_for=held.next_fire_at, trigger=FiringTrigger.CRON, now=held.next_fire_at
    ) == ("skipped", None)
    assert not AIJob.objects.exists()
    assert not ScheduleFiring.objects.exists()  # the claim rolled back with it


def test_run_now_submits_a_job_and_leaves_the_cron_firings_alone(make_schedule, redis_conn):
    schedule = make_schedule(paused=True)  # run-now works while paused

    firing = services.schedule_run_now(schedule_id=schedule.id)

    assert firing.trigger == FiringTrigger.MANUAL and firing.outcome == FiringOutcome.SUBMITTED
    assert AIJob.objects.get().id == firing.job_id
    schedule.refresh_from_db()
    assert (schedule.paused, schedule.next_fire_at) == (True, None)
    assert schedule.last_fired_at == firing.fired_at


def test_a_refused_submission_is_recorded_and_the_schedule_moves_on(
    make_schedule, redis_conn, settings, django_capture_on_commit_callbacks
):
    schedule = make_schedule(provider="simulated", model="sim-small")
    settings.AI_ENABLE_SIMULATED_PROVIDER = False  # the provider went away after the schedule was saved
    due = schedule.next_fire_at
    failed_before = firings_counted("failed")

    with django_capture_on_commit_callbacks(execute=True):
        report = scheduler_tick(now=due)

    assert [f["outcome"] for f in report.fired] == ["failed"]
    firing = ScheduleFiring.objects.get()
    assert firing.outcome == FiringOutcome.FAILED and firing.job_id is None
    assert "not configured" in firing.error
    assert not AIJob.objects.exists()
    schedule.refresh_from_db()
    assert schedule.next_fire_at == due + timedelta(minutes=5)  # not retried in a loop
    assert firings_counted("failed") == failed_before + 1


def test_a_tick_sets_the_last_tick_gauge(make_schedule, redis_conn):
    metrics.SCHEDULER_LAST_TICK.set(0)
    scheduler_tick()
    assert metrics.SCHEDULER_LAST_TICK._value.get() == pytest.approx(timezone.now().timestamp(), abs=30)


def test_old_firing_records_are_pruned(make_schedule, redis_conn, settings):
    schedule = make_schedule()
    services.schedule_run_now(schedule_id=schedule.id)
    services.schedule_run_now(schedule_id=schedule.id)
    old, new = ScheduleFiring.objects.order_by("id")
    ScheduleFiring.objects.filter(pk=old.pk).update(fired_at=timezone.now() - timedelta(days=31))

    assert scheduler_tick(prune=True).pruned == 1
    assert list(ScheduleFiring.objects.values_list("id", flat=True)) == [new.id]


def test_a_fired_job_runs_to_success_through_a_real_worker(make_schedule, run_worker):
    schedule = make_schedule(provider="local", prompt="A page for the club's spring ride")

    report = scheduler_tick(now=schedule.next_fire_at)
    run_worker()

    job = AIJob.objects.get(id=report.fired[0]["job_id"])
    assert job.status == JobStatus.SUCCEEDED
    assert job.result["title"]


BATCH_TEMPLATE = {
    "jobs": [{"prompt": f"page {i}", "provider": "local"} for i in range(3)],
    "webhook": {"url": "https://hooks.example.com/done", "events": ["batch.completed"]},
    "metadata": {"site": "club"},
}


def test_a_batch_template_fires_its_batch_exactly_once_per_instant(
    make_schedule, redis_conn, django_capture_on_commit_callbacks
):
    schedule = make_schedule(batch=BATCH_TEMPLATE)
    due = schedule.next_fire_at

    with django_capture_on_commit_callbacks(execute=True):
        report = scheduler_tick(now=due)
    # the same instant again, as a second scheduler that reached it would: the firing key refuses it
    outcome, firing = schedule_fire(schedule=schedule, scheduled_for=due, trigger=FiringTrigger.CRON, now=due)

    assert (outcome, firing) == ("skipped", None)
    [fired] = report.fired
    batch = Batch.objects.get()
    assert fired["outcome"] == "submitted" and fired["batch_id"] == str(batch.id) and fired["job_id"] is None
    assert (batch.owner, batch.total, batch.metadata, batch.webhook) == (
        schedule.owner,
        3,
        {"site": "club"},
        BATCH_TEMPLATE["webhook"],
    )
    assert sorted(AIJob.objects.filter(batch=batch).values_list("prompt", flat=True)) == ["page 0", "page 1", "page 2"]
    assert AIJob.objects.count() == 3
    row = ScheduleFiring.objects.get()
    assert (row.batch_id, row.job_id, row.outcome) == (batch.id, None, FiringOutcome.SUBMITTED)
    assert scheduler_tick(now=due).fired == [] and Batch.objects.count() == 1


def test_a_refused_batch_firing_is_recorded_with_the_reason(make_schedule, redis_conn, settings):
    schedule = make_schedule(batch={"jobs": [{"prompt": "x", "provider": "simulated", "model": "sim-small"}]})
    settings.AI_ENABLE_SIMULATED_PROVIDER = False  # the provider went away after the schedule was saved

    report = scheduler_tick(now=schedule.next_fire_at)

    assert [f["outcome"] for f in report.fired] == ["failed"]
    firing = ScheduleFiring.objects.get()
    assert firing.batch_id is None and "jobs[0]" in firing.error and "not configured" in firing.error
    assert not Batch.objects.exists() and not AIJob.objects.exists()


def test_a_job_template_fires_with_its_webhook_fallbacks_and_routing_policy(make_schedule, redis_conn):
    webhook = {"url": "https://hooks.example.com/x", "events": ["job.succeeded"]}
    fallbacks = [{"provider": "local", "model": "local-page"}]
    schedule = make_schedule(
        provider="simulated", model="sim-small", webhook=webhook, fallbacks=fallbacks, routing_policy="cheapest"
    )

    services.schedule_run_now(schedule_id=schedule.id)

    job = AIJob.objects.get()
    assert (job.webhook, job.fallbacks, job.routing_policy) == (webhook, fallbacks, "cheapest")


def test_a_fired_batch_runs_to_completed_through_a_real_worker(make_schedule, run_worker):
    schedule = make_schedule(batch={"jobs": [{"prompt": f"page {i}", "provider": "local"} for i in range(3)]})

    firing = services.schedule_run_now(schedule_id=schedule.id)
    run_worker()

    assert Batch.objects.get(id=firing.batch_id).status == BatchStatus.COMPLETED
    assert set(AIJob.objects.values_list("status", flat=True)) == {JobStatus.SUCCEEDED}
