"""The audit trail: one AuditEntry per staff action that changed someone else's data or the queue, whether it
came through the API, the admin or a command; none for an owner's own jobs, none for a refused action; the
admin shows the entries and cannot change them; operator text cannot forge a log line.

Jobs die through the real pipeline and every action goes through its real interface.
"""

from __future__ import annotations

import getpass
import json
import logging
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from audit.models import AuditEntry
from audit.records import REASON_MAX
from dlq.models import DeadLetter, DeadLetterStatus
from jobs import pipeline, transitions
from jobs.models import AIJob
from tests.factories import UserFactory, submit_job
from usage.models import ModelPrice

pytestmark = pytest.mark.usefixtures("redis_conn")

OPERATOR = getpass.getuser()  # what a command records as its actor
JOBS_ADMIN = "/admin/jobs/aijob/"
DLQ_ADMIN = "/admin/dlq/deadletter/"
AUDIT_ADMIN = "/admin/audit/auditentry/"
OPERATIONS = "/admin/operations/"


def dead(owner) -> AIJob:
    job = submit_job(owner, simulate={"fail_attempts": 9, "error": "auth"}, max_attempts=1)
    assert pipeline.run_attempt(str(job.id), job.rq_job_id).startswith("dead")
    job.refresh_from_db()
    return job


def dead_letter(owner) -> DeadLetter:
    return DeadLetter.objects.get(job_uuid=dead(owner).id, status=DeadLetterStatus.OPEN)


def running(owner) -> AIJob:
    job = submit_job(owner)
    return transitions.job_claim(job_id=str(job.id), rq_job_id=job.rq_job_id)


def trail() -> list[tuple]:
    """(actor, source, action, target_type, target_id, reason) of every entry, oldest first."""
    return list(
        AuditEntry.objects.order_by("id").values_list("actor", "source", "action", "target_type", "target_id", "reason")
    )


def command(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out, stderr=StringIO())
    return out.getvalue()


# --------------------------------------------------------------------------- the API


def test_staff_job_actions_through_the_api_write_one_entry_each(user, staff_api):
    waiting, failed, doomed = submit_job(user), dead(user), dead(user)

    assert staff_api.post(f"/api/ai/jobs/{waiting.id}/cancel").status_code == 200
    assert staff_api.post(f"/api/ai/jobs/{failed.id}/retry").status_code == 202
    assert staff_api.delete(f"/api/ai/jobs/{doomed.id}").status_code == 204

    assert trail() == [
        ("ops", "api", "job.cancel", "job", str(waiting.id), ""),
        ("ops", "api", "job.retry", "job", str(failed.id), ""),
        ("ops", "api", "job.delete", "job", str(doomed.id), ""),
    ]
    deleted = AuditEntry.objects.get(action="job.delete")
    assert not AIJob.objects.filter(id=doomed.id).exists()  # the entry outlives the row it names
    assert deleted.details["owner"] == "alice" and deleted.details["status_before"] == "dead"
    assert deleted.details["model"] == "sim-small" and deleted.at is not None


def test_an_owner_acting_on_their_own_jobs_is_not_audited(user, api, staff_user, staff_api):
    waiting, failed, doomed = submit_job(user), dead(user), dead(user)
    assert api.post(f"/api/ai/jobs/{waiting.id}/cancel").status_code == 200
    assert api.post(f"/api/ai/jobs/{failed.id}/retry").status_code == 202
    assert api.delete(f"/api/ai/jobs/{doomed.id}").status_code == 204
    own = submit_job(staff_user)  # staff acting on their own job: theirs too
    assert staff_api.post(f"/api/ai/jobs/{own.id}/cancel").status_code == 200

    assert trail() == []


def test_refused_and_idempotent_actions_write_nothing(user, other_user, api, staff_api):
    failed, busy = dead(user), running(user)

    assert staff_api.post(f"/api/ai/jobs/{failed.id}/cancel").status_code == 409
    assert staff_api.post(f"/api/ai/jobs/{busy.id}/retry").status_code == 409
    assert staff_api.delete(f"/api/ai/jobs/{busy.id}").status_code == 409
    assert staff_api.delete("/api/ai/jobs/00000000-0000-0000-0000-000000000000").status_code == 404
    assert api.delete(f"/api/ai/jobs/{submit_job(other_user).id}").status_code == 404  # not alice's to see
    entry = DeadLetter.objects.get(job_uuid=failed.id)
    assert staff_api.post(f"/api/ai/dlq/{entry.id}/discard").status_code == 200
    assert staff_api.post(f"/api/ai/dlq/{entry.id}/discard").status_code == 409
    assert staff_api.post(f"/api/ai/dlq/{entry.id}/retry").status_code == 409
    assert staff_api.post("/api/ai/dlq/retry", {}, format="json").status_code == 202  # nothing open: no change
    assert staff_api.post("/api/ai/queue/resume").status_code == 200  # not paused: no change
    assert staff_api.post("/api/ai/queue/pause", {"reason": "x"}, format="json").status_code == 200
    assert staff_api.post("/api/ai/queue/pause", {"reason": "y"}, format="json").status_code == 200  # already

    assert [row[2] for row in trail()] == ["dlq.discard", "queue.pause"]


def test_dlq_and_queue_actions_through_the_api(user, staff_api):
    retried, discarded = dead_letter(user), dead_letter(user)
    bulk = [dead_letter(user), dead_letter(user)]

    assert staff_api.post(f"/api/ai/dlq/{retried.id}/retry").status_code == 202
    assert staff_api.post(f"/api/ai/dlq/{discarded.id}/discard").status_code == 200
    response = staff_api.post("/api/ai/dlq/retry", {"error_type": "AUTH_ERROR"}, format="json")
    assert response.status_code == 202 and response.json()["retried"] == 2
    assert staff_api.post("/api/ai/queue/pause", {"reason": "deploy"}, format="json").status_code == 200
    assert staff_api.post("/api/ai/queue/resume").status_code == 200
    assert (
        staff_api.post("/api/ai/queue/intake", {"open": False, "reason": "db work"}, format="json").status_code == 200
    )
    assert staff_api.post("/api/ai/queue/intake", {"open": True}, format="json").status_code == 200

    assert trail() == [
        ("ops", "api", "dlq.retry", "dead_letter", str(retried.id), ""),
        ("ops", "api", "dlq.discard", "dead_letter", str(discarded.id), ""),
        ("ops", "api", "dlq.retry_bulk", "dead_letter", "", ""),
        ("ops", "api", "queue.pause", "queue", "", "deploy"),
        ("ops", "api", "queue.resume", "queue", "", ""),
        ("ops", "api", "queue.intake_close", "queue", "", "db work"),
        ("ops", "api", "queue.intake_open", "queue", "", ""),
    ]
    details = AuditEntry.objects.get(action="dlq.retry_bulk").details
    assert details["retried"] == 2 and details["skipped"] == 0
    assert sorted(details["entry_ids"]) == sorted(str(entry.id) for entry in bulk)
    assert details["filters"] == {"error_type": "AUTH_ERROR"}
    assert AuditEntry.objects.get(action="dlq.retry").details["job_id"] == str(retried.job_uuid)


# --------------------------------------------------------------------------- the admin


def admin_action(client: Client, url: str, action: str, ids: list) -> None:
    response = client.post(url, {"action": action, "_selected_action": [str(pk) for pk in ids], "index": "0"})
    assert response.status_code == 302, response.content


def test_staff_job_actions_in_the_admin_write_one_entry_per_job(user, staff_user, staff_client):
    waiting = [submit_job(user), submit_job(user)]
    failed, doomed, own = dead(user), dead(user), dead(staff_user)

    admin_action(staff_client, JOBS_ADMIN, "cancel_selected", [job.id for job in waiting])
    admin_action(staff_client, JOBS_ADMIN, "retry_selected", [failed.id, own.id])
    admin_action(staff_client, JOBS_ADMIN, "delete_selected_jobs", [doomed.id, failed.id])  # failed: queued now

    assert sorted(trail()) == sorted(
        [
            *[("ops", "admin", "job.cancel", "job", str(job.id), "") for job in waiting],
            ("ops", "admin", "job.retry", "job", str(failed.id), ""),  # not `own`: the actor's own job
            ("ops", "admin", "job.delete", "job", str(doomed.id), ""),
            ("ops", "admin", "job.delete", "job", str(failed.id), ""),
        ]
    )


def test_dlq_and_queue_actions_in_the_admin(user, staff_client):
    retried, discarded = dead_letter(user), dead_letter(user)
    admin_action(staff_client, DLQ_ADMIN, "retry_selected", [retried.id])
    admin_action(staff_client, DLQ_ADMIN, "discard_selected", [discarded.id, retried.id])  # retried: refused
    for form in (
        {"action": "pause", "reason": "upgrade\nforged line"},
        {"action": "resume"},
        {"action": "close-intake", "reason": "maintenance"},
        {"action": "open-intake"},
    ):
        assert staff_client.post(OPERATIONS, {**form, "confirmed": "yes"}).status_code == 302

    assert trail() == [
        ("ops", "admin", "dlq.retry", "dead_letter", str(retried.id), ""),
        ("ops", "admin", "dlq.discard", "dead_letter", str(discarded.id), ""),
        ("ops", "admin", "queue.pause", "queue", "", "upgrade\nforged line"),
        ("ops", "admin", "queue.resume", "queue", "", ""),
        ("ops", "admin", "queue.intake_close", "queue", "", "maintenance"),
        ("ops", "admin", "queue.intake_open", "queue", "", ""),
    ]


def test_a_price_set_in_the_admin_is_audited(db):
    root = UserFactory(username="root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(root)
    response = client.post(
        "/admin/usage/modelprice/add/",
        {
            "provider": "simulated", "model": "sim-large", "input_per_million": "3", "output_per_million": "9",
            "cached_input_per_million": "", "cache_write_per_million": "", "effective_from_0": "",
            "effective_from_1": "",
        },
    )  # fmt: skip
    assert response.status_code == 302, response.content

    price = ModelPrice.objects.filter(provider="simulated", model="sim-large").latest("effective_from")
    assert trail() == [("root", "admin", "price.set", "model_price", str(price.id), "")]
    details = AuditEntry.objects.get().details
    assert details["model"] == "sim-large"
    assert (Decimal(details["input_per_million"]), Decimal(details["output_per_million"])) == (3, 9)


# --------------------------------------------------------------------------- the commands


def test_job_commands_write_one_entry_each_with_the_reason(user):
    waiting, failed, doomed = submit_job(user), dead(user), dead(user)
    more = [dead(user), dead(user)]

    command("jobs", "cancel", str(waiting.id), "--reason", "customer asked")
    command("jobs", "retry", str(failed.id))
    command("jobs", "delete", str(doomed.id), "--yes", "--reason", "GDPR request")
    command("jobs", "retry", "--status", "dead", "--yes", "--reason", "provider fixed")
    command("jobs", "retry", "--status", "dead", "--dry-run")  # changes nothing

    assert trail() == [
        (OPERATOR, "command", "job.cancel", "job", str(waiting.id), "customer asked"),
        (OPERATOR, "command", "job.retry", "job", str(failed.id), ""),
        (OPERATOR, "command", "job.delete", "job", str(doomed.id), "GDPR request"),
        (OPERATOR, "command", "jobs.retry_bulk", "job", "", "provider fixed"),
    ]
    details = AuditEntry.objects.get(action="jobs.retry_bulk").details
    assert details["matched"] == details["retried"] == 2 and details["status"] == "dead"
    assert sorted(details["job_ids"]) == sorted(str(job.id) for job in more)


def test_dlq_commands(user):
    retried, discarded, bulk = dead_letter(user), dead_letter(user), dead_letter(user)

    command("dlq", "retry", str(retried.id), "--reason", "key rotated")
    command("dlq", "discard", str(discarded.id))
    command("dlq", "retry", "--all", "--yes")

    assert trail() == [
        (OPERATOR, "command", "dlq.retry", "dead_letter", str(retried.id), "key rotated"),
        (OPERATOR, "command", "dlq.discard", "dead_letter", str(discarded.id), ""),
        (OPERATOR, "command", "dlq.retry_bulk", "dead_letter", "", ""),
    ]
    assert AuditEntry.objects.get(action="dlq.retry_bulk").details["entry_ids"] == [str(bulk.id)]


def test_queue_commands(user, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):  # their deliveries reach Redis
        waiting = [submit_job(user), submit_job(user)]

    command("queue", "pause", "--reason", "deploy")
    command("queue", "resume")
    command("queue", "intake", "off", "--reason", "migration")
    command("queue", "intake", "on")
    command("queue", "clear", "--status", "waiting", "--yes", "--reason", "bad batch")
    command("queue", "clear", "--status", "waiting", "--yes")  # nothing left: no entry

    assert trail() == [
        (OPERATOR, "command", "queue.pause", "queue", "", "deploy"),
        (OPERATOR, "command", "queue.resume", "queue", "", ""),
        (OPERATOR, "command", "queue.intake_close", "queue", "", "migration"),
        (OPERATOR, "command", "queue.intake_open", "queue", "", ""),
        (OPERATOR, "command", "queue.clear", "queue", "", "bad batch"),
    ]
    details = AuditEntry.objects.get(action="queue.clear").details
    assert details["canceled"] == 2 and sorted(details["job_ids"]) == sorted(str(job.id) for job in waiting)
    assert json.loads(command("queue", "status", "--json"))["paused"] is False


def test_price_commands(db, tmp_path):
    command("usage", "prices", "set", "simulated", "sim-large", "--input", "3", "--output", "9")
    prices = tmp_path / "prices.json"
    prices.write_text(
        json.dumps(
            [{"provider": "simulated", "model": "sim-small", "input_per_million": "5", "output_per_million": "7"}]
        )
    )
    command("usage", "prices", "load", str(prices))
    command("usage", "prices", "sync")  # the data migration synced already: nothing added, nothing recorded

    set_price = ModelPrice.objects.filter(model="sim-large").latest("effective_from")
    assert trail() == [
        (OPERATOR, "command", "price.set", "model_price", str(set_price.id), ""),
        (OPERATOR, "command", "prices.load", "model_price", "", ""),
    ]
    loaded = AuditEntry.objects.get(action="prices.load").details
    assert loaded["created"] == 1 and loaded["prices"][0]["model"] == "sim-small"


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args",
    [
        ("jobs", "cancel", "{waiting}", "--reason", "x" * (REASON_MAX + 1)),
        ("jobs", "retry", "{dead}", "--reason", "x" * (REASON_MAX + 1)),
        ("jobs", "delete", "{dead}", "--yes", "--reason", "x" * (REASON_MAX + 1)),
        ("jobs", "retry", "--status", "dead", "--yes", "--reason", "x" * (REASON_MAX + 1)),
        ("jobs", "cancel", "{waiting}", "--reason", "nul\x00byte"),
        ("dlq", "retry", "{entry}", "--reason", "x" * (REASON_MAX + 1)),
        ("dlq", "discard", "{entry}", "--reason", "x" * (REASON_MAX + 1)),
        ("dlq", "retry", "--all", "--yes", "--reason", "x" * (REASON_MAX + 1)),
        ("queue", "clear", "--yes", "--reason", "x" * (REASON_MAX + 1)),
        ("queue", "pause", "--reason", "x" * (REASON_MAX + 1)),
    ],
)
def test_a_bad_reason_refuses_the_action_and_records_nothing(user, args):
    waiting, failed = submit_job(user), dead(user)
    entry = DeadLetter.objects.get(job_uuid=failed.id)
    ids = {"waiting": waiting.id, "dead": failed.id, "entry": entry.id}
    before = (list(AIJob.objects.order_by("id").values_list("id", "status")), entry.status)

    with pytest.raises(CommandError, match="reason must"):
        command(*(arg.format(**ids) if arg.startswith("{") else arg for arg in args))

    entry.refresh_from_db()
    assert (list(AIJob.objects.order_by("id").values_list("id", "status")), entry.status) == before
    assert trail() == []


def test_operator_text_cannot_forge_a_log_line(user, staff_api, caplog):
    waiting = submit_job(user)
    forged = "typo\n2026-12-03 09:00:00 WARNING audit: queue.resume queue '' by 'admin' via api"

    with caplog.at_level(logging.WARNING, logger="audit.records"):
        command("jobs", "cancel", str(waiting.id), "--reason", forged)
        staff_api.post("/api/ai/queue/pause", {"reason": forged}, format="json")

    lines = [record.getMessage() for record in caplog.records if record.name == "audit.records"]
    assert len(lines) == 2 and all("\n" not in line and "typo\\n2026" in line for line in lines)
    assert AuditEntry.objects.filter(reason=forged).count() == 2  # the record keeps the text as typed


# --------------------------------------------------------------------------- the admin shows the trail


def test_the_admin_lists_the_trail_and_cannot_change_it(user, staff_api, staff_client, user_client):
    staff_api.post(f"/api/ai/jobs/{submit_job(user).id}/cancel")
    staff_api.post("/api/ai/queue/pause", {"reason": "nightly <b>maintenance</b>"}, format="json")
    cancel, pause = AuditEntry.objects.order_by("id")

    page = staff_client.get(AUDIT_ADMIN)
    assert page.status_code == 200
    text = page.content.decode()
    assert "job.cancel" in text and "queue.pause" in text and str(cancel.target_id) in text
    assert "nightly &lt;b&gt;maintenance&lt;/b&gt;" in text  # escaped, never markup
    assert staff_client.get(AUDIT_ADMIN, {"action__exact": "queue.pause"}).content.decode().count("queue.pause") >= 1
    assert str(cancel.target_id) in staff_client.get(AUDIT_ADMIN, {"q": str(cancel.target_id)}).content.decode()

    detail = staff_client.get(f"{AUDIT_ADMIN}{cancel.pk}/change/")
    assert detail.status_code == 200
    assert 'name="_save"' not in detail.content.decode()
    assert "&quot;owner&quot;: &quot;alice&quot;" in detail.content.decode()
    assert staff_client.post(f"{AUDIT_ADMIN}{cancel.pk}/change/", {"reason": "rewritten"}).status_code == 403
    assert staff_client.get(f"{AUDIT_ADMIN}add/").status_code == 403
    assert staff_client.post(f"{AUDIT_ADMIN}{pause.pk}/delete/", {"post": "yes"}).status_code == 403
    response = staff_client.post(AUDIT_ADMIN, {"action": "delete_selected", "_selected_action": [str(pause.pk)]})
    assert response.status_code in (200, 302)
    assert AuditEntry.objects.count() == 2 and AuditEntry.objects.get(pk=cancel.pk).reason == ""
    # not for users who are not staff
    assert user_client.get(AUDIT_ADMIN).status_code == 302
