"""The DeadLetter admin through Django's test client: list, filters, search, stats, change page, actions."""

from __future__ import annotations

import re

from django.test import Client

from dlq.models import DeadLetter
from jobs import actions
from jobs.models import AIJob, JobStatus

CHANGELIST = "/admin/dlq/deadletter/"


def listed_ids(response) -> set[int]:
    return {int(pk) for pk in re.findall(r'name="_selected_action" value="(\d+)"', response.content.decode())}


def stat(response, name: str) -> int:
    return int(re.search(rf'id="dlq-{name}">(\d+)<', response.content.decode()).group(1))


def test_changelist_shows_entries_and_stats_and_filters(kill, user, staff_client):
    auth = kill(user, error="auth")
    flaky = kill(user, error="unavailable", model="sim-large")
    gone = kill(user, error="model_not_found")
    actions.job_retry(job_id=gone.job_uuid)  # resolves it

    response = staff_client.get(CHANGELIST)

    assert response.status_code == 200
    assert listed_ids(response) == {auth.id, flaky.id, gone.id}
    assert (stat(response, "total"), stat(response, "open")) == (3, 2)
    assert (stat(response, "retryable"), stat(response, "non-retryable")) == (1, 1)
    assert "AUTH_ERROR: 1" in response.content.decode() and "sim-large: 1" in response.content.decode()
    assert listed_ids(staff_client.get(CHANGELIST, {"status__exact": "open"})) == {auth.id, flaky.id}
    assert listed_ids(staff_client.get(CHANGELIST, {"error_type__exact": "AUTH_ERROR"})) == {auth.id}
    assert listed_ids(staff_client.get(CHANGELIST, {"retryable__exact": "1"})) == {flaky.id}
    assert listed_ids(staff_client.get(CHANGELIST, {"provider__exact": "local"})) == set()


def test_search_by_job_id_entry_id_and_message(kill, user, staff_client):
    auth = kill(user, error="auth")
    flaky = kill(user, error="unavailable")

    assert listed_ids(staff_client.get(CHANGELIST, {"q": str(auth.job_uuid)})) == {auth.id}
    assert listed_ids(staff_client.get(CHANGELIST, {"q": f"  {str(flaky.job_uuid).upper()} "})) == {flaky.id}
    assert listed_ids(staff_client.get(CHANGELIST, {"q": "invalid API key"})) == {auth.id}
    assert listed_ids(staff_client.get(CHANGELIST, {"q": "unavailable"})) == {flaky.id}
    assert listed_ids(staff_client.get(CHANGELIST, {"q": str(flaky.id)})) == {flaky.id}
    assert listed_ids(staff_client.get(CHANGELIST, {"q": "no such words"})) == set()


def test_change_page_shows_the_snapshot_and_attempt_history_escaped(kill, user, staff_client):
    entry = kill(user, error="auth", prompt="<script>alert(1)</script> a page")

    response = staff_client.get(f"{CHANGELIST}{entry.id}/change/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; a page" in html and "<script>alert(1)" not in html
    assert "attempt history" in html.lower()
    assert re.search(r"<td>1</td><td>failed</td><td>AUTH_ERROR</td><td>simulated: invalid API key</td>", html)
    assert str(entry.job_uuid) in html and "simulated" in html
    assert 'name="_save"' not in html  # read-only: nothing to edit by hand


def test_change_page_of_an_entry_whose_job_was_deleted(kill, user, staff_client):
    entry = kill(user)
    actions.job_delete(job_id=entry.job_uuid)
    html = staff_client.get(f"{CHANGELIST}{entry.id}/change/").content.decode()
    assert f"{entry.job_uuid} <strong>(deleted)</strong>" in html


def test_retry_and_discard_actions(kill, user, staff_client):
    retry_me, discard_me, orphan = kill(user), kill(user), kill(user)
    actions.job_delete(job_id=orphan.job_uuid)

    response = staff_client.post(
        CHANGELIST,
        {"action": "retry_selected", "index": "0", "_selected_action": [retry_me.id, orphan.id]},
        follow=True,
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert "Retried 1 dead letter." in page and "was deleted; discard the entry instead" in page
    retry_me.refresh_from_db()
    orphan.refresh_from_db()
    assert retry_me.status == "retried" and orphan.status == "open"
    assert AIJob.objects.get(id=retry_me.job_uuid).status == JobStatus.QUEUED

    staff_client.post(
        CHANGELIST, {"action": "discard_selected", "index": "0", "_selected_action": [discard_me.id, orphan.id]}
    )

    assert dict(DeadLetter.objects.values_list("id", "status")) == {
        retry_me.id: "retried",
        discard_me.id: "discarded",
        orphan.id: "discarded",
    }
    assert AIJob.objects.get(id=discard_me.job_uuid).status == JobStatus.DEAD


def test_no_add_or_delete_in_the_admin(kill, user, staff_client):
    entry = kill(user)
    assert staff_client.get(f"{CHANGELIST}add/").status_code == 403
    assert staff_client.post(f"{CHANGELIST}{entry.id}/delete/", {"post": "yes"}).status_code == 403
    staff_client.post(
        CHANGELIST, {"action": "delete_selected", "index": "0", "_selected_action": [entry.id], "post": "yes"}
    )
    assert DeadLetter.objects.filter(id=entry.id).exists()


def test_non_staff_and_anonymous_are_refused(kill, user, user_client):
    entry = kill(user)
    for client in (user_client, Client()):
        for url in (CHANGELIST, f"{CHANGELIST}{entry.id}/change/"):
            response = client.get(url)
            assert response.status_code == 302 and "/admin/login/" in response["Location"]
        response = client.post(CHANGELIST, {"action": "retry_selected", "index": "0", "_selected_action": [entry.id]})
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    entry.refresh_from_db()
    assert entry.status == "open"
    assert AIJob.objects.get(id=entry.job_uuid).status == JobStatus.DEAD
