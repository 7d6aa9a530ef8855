"""POST/GET /api/ai/schedules and GET/DELETE /api/ai/schedules/{id}: shapes, bad input, permissions, audit."""

from __future__ import annotations

import uuid

import pytest

from audit.models import AuditEntry
from schedules.models import Schedule
from webhooks.models import WebhookSecret

LIST = "/api/ai/schedules"
GOOD = {"cron": "0 9 * * 1-5", "timezone": "Europe/Paris", "prompt": "A page for the ride", "provider": "local"}


def detail(schedule_id) -> str:
    return f"{LIST}/{schedule_id}"


def assert_error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body["error"]) == {"type", "message", "details"}
    return body["error"]


def test_create_answers_201_with_the_schedule_and_its_first_instant(api, user):
    response = api.post(LIST, {**GOOD, "name": "weekday page", "options": {"temperature": 0.2}}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    schedule = Schedule.objects.get()
    assert body["id"] == str(schedule.id)
    assert (body["owner"], body["cron"], body["timezone"], body["paused"]) == (
        "alice",
        "0 9 * * 1-5",
        "Europe/Paris",
        False,
    )
    assert (body["provider"], body["model"], body["max_attempts"]) == ("local", "local-page", 3)  # defaults filled
    assert body["next_fire_at"] is not None and body["recent_firings"] == []
    assert schedule.owner == user and schedule.options == {"temperature": 0.2}


def test_create_paused_has_no_next_instant(api):
    body = api.post(LIST, {**GOOD, "paused": True}, format="json").json()
    assert (body["paused"], body["next_fire_at"]) == (True, None)


@pytest.mark.parametrize(
    ("change", "field_or_words"),
    [
        ({"cron": "not cron"}, "5 fields"),
        ({"cron": "61 * * * *"}, "not valid"),
        ({"cron": "* * * * * *"}, "5 fields"),
        ({"cron": "@reboot"}, "macro"),
        ({"cron": "0 0 30 2 *"}, "never fires"),
        ({"cron": ""}, "cron"),
        ({"cron": 5}, "cron"),
        ({"cron": "0 " * 60}, "cron"),
        ({"timezone": "Mars/Olympus_Mons"}, "IANA"),
        ({"timezone": ""}, "timezone"),
        ({"timezone": 1}, "timezone"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt must not be empty"),
        ({"prompt": "x" * 20_001}, "prompt"),
        ({"provider": "nope"}, "provider"),
        ({"provider": "openai"}, "not configured"),
        ({"model": "no-such-model"}, "no-such-model"),
        ({"priority": "urgent"}, "priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 11}, "max_attempts"),
        ({"max_attempts": "3"}, "max_attempts"),
        ({"options": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}}, "nest"),
        ({"options": {"simulate": {"error": "rate_limit"}}}, "simulate"),
        ({"options": []}, "options"),
        ({"name": "n" * 201}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"paused": "yes"}, "paused"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_input_is_a_400_and_nothing_is_saved(api, change, field_or_words):
    error = assert_error(api.post(LIST, {**GOOD, **change}, format="json"), 400)
    assert field_or_words in (error["message"] + str(error["details"]))
    assert not Schedule.objects.exists()


def test_a_body_that_is_not_a_json_object_is_a_400(api):
    assert_error(api.post(LIST, "[1, 2]", content_type="application/json"), 400)
    assert_error(api.post(LIST, "{not json", content_type="application/json"), 400)
    assert not Schedule.objects.exists()


def test_past_the_per_user_limit_is_a_409(api, settings):
    settings.AI_SCHEDULES_PER_USER_MAX = 1
    assert api.post(LIST, GOOD, format="json").status_code == 201
    error = assert_error(api.post(LIST, GOOD, format="json"), 409)
    assert "AI_SCHEDULES_PER_USER_MAX" in error["message"]
    assert Schedule.objects.count() == 1


def test_anonymous_requests_are_refused_and_change_nothing(anon_api, make_schedule):
    schedule = make_schedule()
    for response in (
        anon_api.get(LIST),
        anon_api.post(LIST, GOOD, format="json"),
        anon_api.get(detail(schedule.id)),
        anon_api.delete(detail(schedule.id)),
    ):
        assert response.status_code in (401, 403)
    assert list(Schedule.objects.values_list("id", flat=True)) == [schedule.id]


def test_owners_list_their_own_and_staff_list_all(api, staff_api, make_schedule, other_user):
    mine = make_schedule()
    theirs = make_schedule(owner=other_user, paused=True)

    assert [row["id"] for row in api.get(LIST).json()["results"]] == [str(mine.id)]
    assert {row["id"] for row in staff_api.get(LIST).json()["results"]} == {str(mine.id), str(theirs.id)}
    assert [row["id"] for row in staff_api.get(LIST, {"paused": "true"}).json()["results"]] == [str(theirs.id)]


@pytest.mark.parametrize("query", [{"paused": "maybe"}, {"limit": "0"}, {"limit": "501"}, {"offset": "-1"}, {"x": "1"}])
def test_bad_list_parameters_are_a_400(api, query):
    assert_error(api.get(LIST, query), 400)


def test_detail_shows_recent_firings_and_hides_other_users_schedules(api, staff_api, make_schedule, other_user):
    from schedules.services import schedule_run_now

    mine = make_schedule()
    theirs = make_schedule(owner=other_user)
    firing = schedule_run_now(schedule_id=mine.id)

    body = api.get(detail(mine.id)).json()
    assert [(f["id"], f["trigger"], f["job_id"]) for f in body["recent_firings"]] == [
        (firing.id, "manual", str(firing.job_id))
    ]
    assert_error(api.get(detail(theirs.id)), 404)
    assert_error(api.get(detail(uuid.uuid4())), 404)
    assert api.get(f"{LIST}/not-a-uuid").status_code == 404
    assert staff_api.get(detail(theirs.id)).status_code == 200


def test_an_owner_deletes_their_own_without_an_audit_entry(api, make_schedule):
    schedule = make_schedule()
    assert api.delete(detail(schedule.id)).status_code == 204
    assert not Schedule.objects.exists()
    assert not AuditEntry.objects.exists()


def test_another_users_schedule_cannot_be_deleted(api, make_schedule, other_user):
    theirs = make_schedule(owner=other_user)
    assert_error(api.delete(detail(theirs.id)), 404)
    assert Schedule.objects.filter(pk=theirs.pk).exists()
    assert not AuditEntry.objects.exists()


def test_staff_deleting_another_users_schedule_is_audited(staff_api, make_schedule, other_user):
    theirs = make_schedule(owner=other_user, name="bob's page")

    assert staff_api.delete(detail(theirs.id)).status_code == 204

    assert not Schedule.objects.exists()
    entry = AuditEntry.objects.get()
    assert (entry.actor, entry.source, entry.action, entry.target_type, entry.target_id) == (
        "ops",
        "api",
        "schedule.delete",
        "schedule",
        str(theirs.id),
    )
    assert entry.details["owner"] == "bob" and entry.details["name"] == "bob's page"


def test_high_priority_needs_the_permission_a_job_needs(api, staff_api):
    response = api.post(LIST, {**GOOD, "priority": "high"}, format="json")
    assert response.status_code == 403 and response.json()["error"]["type"] == "permission_denied"
    assert not Schedule.objects.exists()
    assert staff_api.post(LIST, {**GOOD, "priority": "high"}, format="json").status_code == 201


def test_a_job_template_takes_a_webhook_fallbacks_and_a_routing_policy(api, user):
    extra = {
        "webhook": {"url": "https://hooks.example.com/x", "events": ["job.dead"]},
        "fallbacks": [{"provider": "local", "model": "local-page"}],
        "routing_policy": "cheapest",
    }
    response = api.post(LIST, {**GOOD, "provider": "simulated", "model": "sim-small", **extra}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["kind"] == "job" and body["batch"] is None
    assert (body["webhook"], body["fallbacks"], body["routing_policy"]) == (
        extra["webhook"],
        extra["fallbacks"],
        "cheapest",
    )
    schedule = Schedule.objects.get()
    assert schedule.webhook == extra["webhook"] and schedule.routing_policy == "cheapest"
    assert WebhookSecret.objects.filter(owner=user).exists(), "its firings' events will be signed"


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        ({"webhook": {"url": "http://hooks.example.com/x"}}, "webhook.url must use https"),
        ({"webhook": {"url": "https://10.0.0.8/x"}}, "webhook.url must point at a public address"),
        ({"webhook": {"url": "https://hooks.example.com/x", "events": ["batch.completed"]}}, "webhook.events"),
        ({"webhook": "https://hooks.example.com/x"}, "webhook"),
        ({"fallbacks": [{"provider": "nope", "model": "x"}]}, "fallbacks"),
        ({"fallbacks": "local"}, "fallbacks"),
        ({"routing_policy": "random"}, "routing_policy"),
    ],
)
def test_a_bad_webhook_fallbacks_or_routing_policy_is_a_400_naming_it(api, extra, says):
    error = assert_error(api.post(LIST, {**GOOD, **extra}, format="json"), 400)
    assert says in error["message"] + str(error["details"])
    assert not Schedule.objects.exists() and not WebhookSecret.objects.exists()


BATCH = {
    "jobs": [{"prompt": "Home page of a club", "provider": "local"}, {"prompt": "Rides page", "priority": "low"}],
    "webhook": {"url": "https://hooks.example.com/done", "events": ["batch.completed"]},
    "metadata": {"site": "club"},
}


def test_a_batch_template_is_saved_and_shown_as_one(api, user):
    response = api.post(LIST, {"cron": "0 6 * * 1", "name": "weekly", "batch": BATCH}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["kind"] == "batch" and body["prompt"] == "" and body["webhook"] is None
    assert body["batch"]["webhook"] == BATCH["webhook"] and body["batch"]["metadata"] == {"site": "club"}
    assert [job["prompt"] for job in body["batch"]["jobs"]] == ["Home page of a club", "Rides page"]
    assert Schedule.objects.get().kind == "batch"
    assert WebhookSecret.objects.filter(owner=user).exists()
    assert api.get(detail(body["id"])).json()["batch"] == body["batch"]


@pytest.mark.parametrize(
    ("batch", "extra", "says"),
    [
        ({"jobs": []}, {}, "batch"),
        ({"jobs": "x"}, {}, "batch"),
        ("a batch", {}, "batch"),
        ({"jobs": [{"prompt": "x"}], "colour": "red"}, {}, "colour"),
        ({"jobs": [{"prompt": "x"}, {"prompt": ""}]}, {}, "batch.jobs[1]"),
        ({"jobs": [{"prompt": "x"}, "not a job"]}, {}, "batch.jobs[1]"),
        ({"jobs": [{"prompt": "x", "model": "no-such-model"}]}, {}, "batch.jobs[0]"),
        ({"jobs": [{"prompt": "x", "webhook": {"url": "https://10.1.1.1/"}}]}, {}, "batch.jobs[0]: webhook.url"),
        ({"jobs": [{"prompt": "x"}], "webhook": {"url": "http://hooks.example.com/"}}, {}, "batch.webhook.url"),
        ({"jobs": [{"prompt": "x"}], "webhook": {"url": "https://[::1]/"}}, {}, "batch.webhook.url"),
        ({"jobs": [{"prompt": "x"}], "webhook": {"url": "https://h.example.com/", "events": ["job.x"]}}, {}, "batch."),
        ({"jobs": [{"prompt": "x"}], "metadata": {"a": "\u0000"}}, {}, "batch.metadata"),
        ({"jobs": [{"prompt": "x"}]}, {"prompt": "a job too"}, "prompt"),
        ({"jobs": [{"prompt": "x"}]}, {"provider": "local"}, "provider"),
    ],
)
def test_a_bad_batch_template_is_a_400_naming_the_field_and_saves_nothing(api, batch, extra, says):
    error = assert_error(api.post(LIST, {"cron": "0 6 * * 1", "batch": batch, **extra}, format="json"), 400)
    assert says in error["message"] + str(error["details"]), error
    assert not Schedule.objects.exists() and not WebhookSecret.objects.exists()


def test_neither_a_prompt_nor_a_batch_is_a_400(api):
    error = assert_error(api.post(LIST, {"cron": "0 6 * * 1"}, format="json"), 400)
    assert "prompt" in error["message"] and "batch" in error["message"]
    assert not Schedule.objects.exists()


def test_a_high_priority_batch_item_needs_the_permission(api):
    batch = {"jobs": [{"prompt": "x"}, {"prompt": "y", "priority": "high"}]}
    assert_error(api.post(LIST, {"cron": "0 6 * * 1", "batch": batch}, format="json"), 403)
    assert not Schedule.objects.exists()
