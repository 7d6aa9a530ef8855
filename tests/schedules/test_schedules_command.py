"""manage.py schedules list|run-now|pause|resume|run: tables, --json, one-line errors that change nothing."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEntry
from jobs.models import AIJob, Batch
from schedules.models import Schedule, ScheduleFiring


def run(*args: str) -> str:
    out = StringIO()
    call_command("schedules", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_list_shows_every_schedule_and_filters(make_schedule, other_user):
    mine = make_schedule(name="alice page")
    theirs = make_schedule(owner=other_user, paused=True)

    table = run("list")
    assert str(mine.id) in table and str(theirs.id) in table and "alice page" in table
    rows = json.loads(run("list", "--json"))
    assert {row["id"] for row in rows} == {str(mine.id), str(theirs.id)}
    assert [row["id"] for row in json.loads(run("list", "--paused", "--json"))] == [str(theirs.id)]
    assert [row["id"] for row in json.loads(run("list", "--active", "--json"))] == [str(mine.id)]
    assert [row["id"] for row in json.loads(run("list", "--owner", "bob", "--json"))] == [str(theirs.id)]
    assert run("list", "--owner", "nobody") == "no schedules match\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("list", "--limit", "0"), "--limit must be a whole number from 1 to 500"),
        (("list", "--limit", "x"), "--limit must be a whole number"),
        (("list", "--owner", " "), "--owner must be a username"),
        (("run-now", "zz"), "not a valid schedule id"),
        (("run-now", "0000"), "no schedule id starts with 0000"),
        (("pause", "not-a-uuid-at-all"), "not a valid schedule id"),
        (("resume", "00000000-0000-0000-0000-000000000000"), "schedule 00000000-0000-0000-0000-000000000000 not found"),
        (("run", "--every", "0"), "--every must be a number of seconds from 0.1 to 3600"),
        (("run", "--every", "soon"), "--every must be a number of seconds"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(make_schedule, args, message):
    schedule = make_schedule()
    with pytest.raises(CommandError, match=message) as caught:
        run(*args)
    assert "\n" not in str(caught.value)
    assert Schedule.objects.get() == schedule and not Schedule.objects.filter(paused=True).exists()
    assert not ScheduleFiring.objects.exists() and not AIJob.objects.exists()
    assert not AuditEntry.objects.exists()


def test_a_reason_over_the_limit_refuses_the_pause(make_schedule):
    schedule = make_schedule()
    with pytest.raises(CommandError, match="reason must be at most 500 characters"):
        run("pause", str(schedule.id), "--reason", "x" * 501)
    schedule.refresh_from_db()
    assert schedule.paused is False and not AuditEntry.objects.exists()


def test_pause_and_resume_by_short_id_are_audited(make_schedule):
    schedule = make_schedule()
    short = str(schedule.id).replace("-", "")[:8]

    assert "is paused" in run("pause", short, "--reason", "holiday")
    schedule.refresh_from_db()
    assert (schedule.paused, schedule.next_fire_at) == (True, None)

    body = json.loads(run("resume", short, "--json"))
    assert body["paused"] is False and body["next_fire_at"]
    actions = list(AuditEntry.objects.order_by("id").values_list("action", "source", "reason"))
    assert actions == [("schedule.pause", "command", "holiday"), ("schedule.resume", "command", "")]


def test_run_now_submits_a_job_and_prints_its_firing(make_schedule, redis_conn):
    schedule = make_schedule()
    body = json.loads(run("run-now", str(schedule.id), "--json"))

    assert body["trigger"] == "manual" and body["outcome"] == "submitted"
    assert AIJob.objects.get().id == __import__("uuid").UUID(body["job_id"])
    assert AuditEntry.objects.get().action == "schedule.run_now"


def test_run_once_fires_what_is_due(make_schedule, redis_conn):
    schedule = make_schedule()
    Schedule.objects.filter(pk=schedule.pk).update(next_fire_at=schedule.created_at)  # its instant has come

    report = json.loads(run("run", "--once", "--json"))

    assert (report["submitted"], report["failed"], report["skipped"]) == (1, 0, 0)
    assert report["fired"][0]["schedule_id"] == str(schedule.id)
    assert AIJob.objects.count() == 1
    assert json.loads(run("run", "--once", "--json"))["submitted"] == 0


def test_list_run_now_and_pause_show_the_template_kind(make_schedule, redis_conn):
    job = make_schedule(name="one page")
    batch = make_schedule(name="whole site", batch={"jobs": [{"prompt": "a"}, {"prompt": "b"}]})

    table = run("list")
    [batch_line] = [line for line in table.splitlines() if str(batch.id) in line]
    [job_line] = [line for line in table.splitlines() if str(job.id) in line]
    assert "KIND" in table.splitlines()[0] and " batch/2 " in batch_line and " job " in job_line
    assert {row["id"]: row["kind"] for row in json.loads(run("list", "--json"))} == {
        str(job.id): "job",
        str(batch.id): "batch",
    }

    out = run("run-now", str(batch.id))
    made = Batch.objects.get()
    assert f"(batch template): batch {made.id}" in out and AIJob.objects.filter(batch=made).count() == 2
    assert json.loads(run("run-now", str(batch.id), "--json"))["batch_id"] == str(Batch.objects.latest("created_at").id)
    assert "(batch template) is paused" in run("pause", str(batch.id))
    assert "(job template)" in run("pause", str(job.id))
