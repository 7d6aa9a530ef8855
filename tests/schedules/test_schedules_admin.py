"""Schedules in the admin: staff only, and the run-now, pause and resume actions (audited for others' rows)."""

from __future__ import annotations

from audit.models import AuditEntry
from jobs.models import AIJob
from schedules.models import Schedule

CHANGELIST = "/admin/schedules/schedule/"


def test_staff_see_the_list_and_a_schedule_with_its_firings(staff_client, make_schedule):
    schedule = make_schedule(name="club page")
    response = staff_client.get(CHANGELIST)
    assert response.status_code == 200 and "club page" in response.content.decode()
    assert staff_client.get(f"{CHANGELIST}{schedule.pk}/change/").status_code == 200
    assert staff_client.get("/admin/schedules/schedulefiring/").status_code == 200


def test_a_user_who_is_not_staff_is_sent_to_log_in(user_client, make_schedule):
    make_schedule()
    response = user_client.get(CHANGELIST)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_pause_resume_and_run_now_actions(staff_client, make_schedule, redis_conn):
    schedule = make_schedule()

    def act(action: str):
        response = staff_client.post(
            CHANGELIST, {"action": action, "index": "0", "_selected_action": [str(schedule.pk)]}, follow=True
        )
        return " ".join(str(message) for message in response.context["messages"])

    assert "paused 1 schedule" in act("pause_selected")
    schedule.refresh_from_db()
    assert schedule.paused is True
    assert "ran 1 schedule" in act("run_now_selected")
    assert AIJob.objects.count() == 1
    assert "resumed 1 schedule" in act("resume_selected")
    schedule.refresh_from_db()
    assert schedule.paused is False and schedule.next_fire_at is not None
    # alice's schedule, changed by staff user ops: each action audited
    assert list(AuditEntry.objects.order_by("id").values_list("action", "source", "actor")) == [
        ("schedule.pause", "admin", "ops"),
        ("schedule.run_now", "admin", "ops"),
        ("schedule.resume", "admin", "ops"),
    ]


def test_the_admin_cannot_add_edit_or_delete_rows(staff_client, make_schedule):
    schedule = make_schedule()
    assert staff_client.get(f"{CHANGELIST}add/").status_code == 403
    assert staff_client.post(f"{CHANGELIST}{schedule.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Schedule.objects.filter(pk=schedule.pk).exists()


def test_the_admin_shows_the_template_kind_and_filters_by_it(staff_client, make_schedule):
    make_schedule(name="one page")
    batch = make_schedule(name="whole site", batch={"jobs": [{"prompt": "a"}, {"prompt": "b"}]})

    page = staff_client.get(f"{CHANGELIST}?kind__exact=batch").content.decode()
    assert "whole site" in page and "one page" not in page
    assert 'class="field-kind">Batch<' in page
    change = staff_client.get(f"{CHANGELIST}{batch.pk}/change/").content.decode()
    assert "Kind" in change and "&quot;jobs&quot;" in change
