"""`manage.py batches list|view|cancel` and the Batch admin, against real Postgres and Redis."""

from __future__ import annotations

import json
import uuid
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditEntry
from jobs.batches import batch_submit
from jobs.models import AIJob, Batch, JobStatus
from tests.ops.test_admin import messages_of

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args) -> str:
    out = StringIO()
    call_command("batches", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def submit(owner, n: int = 3, **metadata) -> Batch:
    batch, created = batch_submit(owner=owner, jobs=[{"prompt": f"page {i}"} for i in range(n)], metadata=metadata)
    assert created
    return batch


def test_list_and_view_show_counts_and_json_is_what_the_api_returns(user, other_user, staff_api, redis_conn):
    older = submit(user, 2)
    newer = submit(other_user, 3, site="club")
    AIJob.objects.filter(id=AIJob.objects.filter(batch=newer).first().id).update(status=JobStatus.SUCCEEDED)
    table = run("list").splitlines()
    assert table[0].split()[:3] == ["ID", "STATUS", "TOTAL"]
    assert [line.split()[0] for line in table[1:]] == [str(newer.id), str(older.id)]
    assert table[1].split()[1:4] == ["running", "3", "1"] and "bob" in table[1]
    assert json.loads(run("list", "--json")) == staff_api.get("/api/ai/batches").json()["results"]
    assert json.loads(run("view", str(newer.id), "--json")) == staff_api.get(f"/api/ai/batches/{newer.id}").json()
    view = run("view", str(newer.id)[:8])
    assert "2 queued, 1 succeeded" in view and "site" in view
    assert [line.split()[0] for line in run("list", "--owner", "alice").splitlines()[1:]] == [str(older.id)]
    assert run("list", "--status", "completed") == "no batches match\n"


def test_cancel_is_audited_with_the_os_user(user, redis_conn):
    batch = submit(user, 3)
    out = run("cancel", str(batch.id), "--reason", "wrong prompts")
    assert f"batch {batch.id} canceled" in out and "3 jobs" in out
    assert AIJob.objects.filter(batch=batch, status=JobStatus.CANCELED).count() == 3
    batch.refresh_from_db()
    assert batch.status == "canceled" and batch.finished_at is not None  # nothing was running
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.source, entry.target_id, entry.reason) == (
        "batch.cancel",
        "command",
        str(batch.id),
        "wrong prompts",
    )
    with pytest.raises(CommandError, match="only a running batch"):
        run("cancel", str(batch.id))
    assert AuditEntry.objects.count() == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("view", "nope"), "not a valid batch id"),
        (("view", str(uuid.uuid4())), "not found"),
        (("view", "abcd"), "no batch id starts with abcd"),
        (("cancel", "zz"), "not a valid batch id"),
        (("cancel", str(uuid.uuid4())), "not found"),
        (("list", "--status", "bogus"), "--status must be one of"),
        (("list", "--limit", "0"), "--limit must be a whole number"),
        (("list", "--limit", "many"), "--limit must be a whole number"),
        (("list", "--offset", "-1"), "--offset must be a whole number"),
        (("list", "--owner", "nobody"), "unknown user"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(user, redis_conn, args, message):
    batch = submit(user, 2)
    with pytest.raises(CommandError, match=message) as caught:
        run(*args)
    assert "\n" not in str(caught.value)
    batch.refresh_from_db()
    assert batch.status == "running" and AIJob.objects.filter(status=JobStatus.QUEUED).count() == 2
    assert not AuditEntry.objects.exists()


def test_cancel_with_an_overlong_reason_changes_nothing(user, redis_conn):
    batch = submit(user, 2)
    with pytest.raises(CommandError, match="reason must be at most"):
        run("cancel", str(batch.id), "--reason", "x" * 501)
    assert AIJob.objects.filter(batch=batch, status=JobStatus.QUEUED).count() == 2


def test_admin_list_and_page_render_with_counts_and_link_to_jobs(staff_client, user, redis_conn):
    batch = submit(user, 3, site="club")
    AIJob.objects.filter(id=AIJob.objects.filter(batch=batch).first().id).update(status=JobStatus.DEAD)
    submit(user, 1)
    page = staff_client.get("/admin/jobs/batch/")
    assert page.status_code == 200
    text = page.content.decode()
    assert str(batch.id) in text and "running" in text
    assert f"?batch__id__exact={batch.id}" in text
    detail = staff_client.get(f"/admin/jobs/batch/{batch.id}/change/")
    assert detail.status_code == 200
    body = detail.content.decode()
    assert "1 dead" in body and "2 queued" in body and "club" in body
    jobs = staff_client.get(f"/admin/jobs/aijob/?batch__id__exact={batch.id}")
    assert jobs.status_code == 200 and "3 results" in jobs.content.decode()
    assert staff_client.get(f"/admin/jobs/batch/?q={batch.id}").status_code == 200


def test_admin_cancel_action_is_audited_and_refuses_non_staff(staff_client, user_client, user, redis_conn):
    batch = submit(user, 2)
    data = {"action": "cancel_selected", "_selected_action": [str(batch.id)], "index": "0"}
    assert user_client.post("/admin/jobs/batch/", data).status_code == 302  # to the login page
    assert Batch.objects.get(id=batch.id).status == "running"
    response = staff_client.post("/admin/jobs/batch/", data, follow=True)
    assert response.status_code == 200 and "canceled 1 batch." in messages_of(response)
    assert Batch.objects.get(id=batch.id).status == "canceled"
    entry = AuditEntry.objects.get()
    assert (entry.action, entry.source, entry.actor) == ("batch.cancel", "admin", "ops")
