"""manage.py dlq through call_command: tables for people, the API's objects with --json, one-line errors."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from dlq.models import DeadLetter
from jobs import actions
from jobs.models import AIJob, JobStatus
from jobs.queues import all_queues
from tests.factories import DeadLetterFactory


def dlq(*args: str) -> str:
    out = StringIO()
    call_command("dlq", *args, stdout=out)
    return out.getvalue()


def snapshot() -> list:
    return [
        list(DeadLetter.objects.order_by("id").values_list("id", "status", "resolved_at")),
        list(AIJob.objects.order_by("id").values_list("id", "status", "attempts", "deliveries")),
        sum(queue.count for queue in all_queues()),
    ]


def refused(*args: str) -> str:
    before = snapshot()
    with pytest.raises(CommandError) as exc:
        dlq(*args)
    assert snapshot() == before
    message = str(exc.value)
    assert message and "\n" not in message
    return message


def test_list_prints_an_aligned_table_and_json_matches_the_api(kill, user, staff_api):
    auth = kill(user, error="auth")
    flaky = kill(user, error="unavailable", model="sim-large")

    table = dlq("list").splitlines()

    assert table[0].split() == [
        "ID", "STATUS", "ERROR", "RETRYABLE", "ATTEMPTS", "PROVIDER/MODEL", "JOB", "CREATED", "MESSAGE",
    ]  # fmt: skip
    assert [line.split()[0] for line in table[1:]] == [str(flaky.id), str(auth.id)]
    assert str(auth.job_uuid) in table[2] and "AUTH_ERROR" in table[2] and "simulated/sim-small" in table[2]
    job_column = table[0].index("JOB")
    assert all(line[job_column:].startswith(str(e.job_uuid)) for line, e in zip(table[1:], (flaky, auth), strict=True))

    assert json.loads(dlq("list", "--json")) == staff_api.get("/api/ai/dlq").json()["results"]
    assert [row["id"] for row in json.loads(dlq("list", "--json", "--error-type", "AUTH_ERROR"))] == [auth.id]
    assert [row["id"] for row in json.loads(dlq("list", "--json", "--limit", "1"))] == [flaky.id]
    assert [row["id"] for row in json.loads(dlq("list", "--json", "--limit", "1", "--offset", "1"))] == [auth.id]
    assert json.loads(dlq("list", "--json", "--status", "retried")) == []
    assert dlq("list", "--status", "discarded").strip() == "no dead letters match"


def test_stats_json_is_the_api_object_and_the_table_has_the_numbers(kill, user, staff_api):
    kill(user, error="auth")
    kill(user, error="unavailable", model="sim-large")

    assert json.loads(dlq("stats", "--json")) == staff_api.get("/api/ai/dlq/stats").json()
    text = dlq("stats")
    assert "total           2" in text and "open            2 (retryable 1, non-retryable 1)" in text
    assert "SERVICE_UNAVAILABLE" in text and "sim-large" in text


@pytest.mark.django_db(transaction=True)
def test_retry_one_entry(kill, user):
    entry = kill(user)

    out = json.loads(dlq("retry", str(entry.id), "--json"))

    assert out == {"dlq_id": entry.id, "job_id": str(entry.job_uuid), "status": "queued"}
    entry.refresh_from_db()
    assert entry.status == "retried"
    assert AIJob.objects.get(id=entry.job_uuid).status == JobStatus.QUEUED
    assert refused("retry", str(entry.id)) == f"dead letter {entry.id} is retried; only open entries can be retried"


def test_retry_all_with_a_filter(kill, user):
    auth, flaky = kill(user, error="auth"), kill(user, error="unavailable")

    out = dlq("retry", "--all", "--error-type", "SERVICE_UNAVAILABLE", "--yes")

    assert out.strip() == "retried 1 dead letter (0 skipped)"
    assert dict(DeadLetter.objects.values_list("id", "status")) == {auth.id: "open", flaky.id: "retried"}
    assert json.loads(dlq("retry", "--all", "--json", "--yes")) == {"retried": 1, "skipped": 0}
    assert DeadLetter.objects.filter(status="open").count() == 0


def test_retry_all_dry_run_counts_and_changes_nothing(kill, user):
    kill(user, error="auth")
    kill(user, error="unavailable")
    before = snapshot()
    assert dlq("retry", "--all", "--dry-run") == "would retry 2 dead letters (dry run: nothing changed)\n"
    out = dlq("retry", "--all", "--dry-run", "--json", "--error-type", "AUTH_ERROR")
    assert json.loads(out) == {"matched": 1, "dry_run": True}
    assert snapshot() == before


def test_retry_all_without_yes_refuses_when_stdin_is_not_a_terminal(kill, user):
    kill(user)
    assert (
        refused("retry", "--all")
        == "refusing to retry every dead letter (open) without --yes (stdin is not a terminal)"
    )
    assert refused("retry", "--all", "--provider", "simulated", "--json") == (
        "refusing to retry every dead letter (open, provider simulated) without --yes (stdin is not a terminal)"
    )


def test_discard(kill, user, staff_api):
    entry = kill(user)

    out = dlq("discard", str(entry.id))

    assert out.strip() == f"dead letter {entry.id} discarded (job {entry.job_uuid} stays dead)"
    entry.refresh_from_db()
    assert entry.status == "discarded"
    assert (
        refused("discard", str(entry.id)) == f"dead letter {entry.id} is discarded; only open entries can be discarded"
    )
    other = kill(user)
    assert json.loads(dlq("discard", str(other.id), "--json")) == staff_api.get("/api/ai/dlq").json()["results"][0]


def test_prune_applies_retention_and_keeps_the_jobs(kill, user, settings):
    entries = [kill(user) for _ in range(4)]
    DeadLetter.objects.filter(id=entries[1].id).update(status="discarded")
    settings.AI_DLQ_MAX_ENTRIES = 2

    assert json.loads(dlq("prune", "--json")) == {"deleted": 2, "expired": 0, "over_cap": 2}

    # the resolved entry went first, then the oldest open one
    assert set(DeadLetter.objects.values_list("id", flat=True)) == {entries[2].id, entries[3].id}
    assert AIJob.objects.filter(status=JobStatus.DEAD).count() == 4
    assert dlq("prune").strip() == (
        "pruned 0 dead letters: 0 older than the age limit (none set), 0 beyond the newest 2"
    )


def test_prune_beyond_one_batch(kill, user, settings):
    from dlq import records as dlq_records

    for _ in range(5):
        kill(user)
    settings.AI_DLQ_MAX_ENTRIES = 1
    assert dlq_records.dlq_prune(batch=2).as_dict() == {"deleted": 4, "expired": 0, "over_cap": 4}
    assert DeadLetter.objects.count() == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("retry", "999999"), "dead letter 999999 not found"),
        (("discard", "999999"), "dead letter 999999 not found"),
        (("retry", "abc"), "dead letter id must be a positive integer, not 'abc'"),
        (("discard", "1.5"), "dead letter id must be a positive integer, not '1.5'"),
        (("discard", "-3"), "dead letter id must be a positive integer, not '-3'"),
        (("discard", "0"), "dead letter id must be a positive integer, not '0'"),
        (("retry",), "give a dead letter id, or --all"),
        (("retry", "1", "--all"), "give either an id or --all, not both"),
        (("retry", "1", "--error-type", "TIMEOUT"), "--error-type, --provider and --model filter --all"),
        (("retry", "1", "--dry-run"), "--dry-run goes with --all"),
        (("retry", "--all", "--dry-run", "--model", "x" * 201), "invalid --model: Ensure this field has no more than"),
        (("retry", "--all", "--error-type", "NOPE"), 'invalid --error-type: "NOPE" is not a valid choice.'),
        (("retry", "--all", "--provider", "acme"), 'invalid --provider: "acme" is not a valid choice.'),
        (("list", "--status", "bogus"), 'invalid --status: "bogus" is not a valid choice.'),
        (("list", "--error-type", "timeout"), 'invalid --error-type: "timeout" is not a valid choice.'),
        (("list", "--limit", "0"), "invalid --limit: Ensure this value is greater than or equal to 1."),
        (("list", "--limit", "many"), "invalid --limit: A valid integer is required."),
        (("list", "--offset", "-1"), "invalid --offset: Ensure this value is greater than or equal to 0."),
        (("discard",), "the following arguments are required: id"),
        (("explode",), "invalid choice: 'explode'"),
        ((), "the following arguments are required: {list,stats,retry,discard,prune}"),
    ],
)
def test_bad_input_is_a_one_line_command_error_and_changes_nothing(kill, user, args, message):
    entry = kill(user)
    got = refused(*args)
    assert message in got
    entry.refresh_from_db()
    assert entry.status == "open"


def test_retry_of_an_entry_whose_job_was_deleted(kill, user):
    entry = kill(user)
    actions.job_delete(job_id=entry.job_uuid)
    assert "was deleted; discard the entry instead" in refused("retry", str(entry.id))


class _Terminal(StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.django_db(transaction=True)
def test_retry_all_shows_progress_on_a_terminal_only(redis_conn):
    DeadLetterFactory.create_batch(60)
    out = _Terminal()
    call_command("dlq", "retry", "--all", "--yes", stdout=out, stderr=StringIO())
    lines = [line for line in out.getvalue().splitlines() if line.startswith("retrying:")]
    assert lines and lines[-1] == "retrying: 60/60 (100%)", out.getvalue()
    assert 5 <= len(lines) <= 12  # about every 10 %, not a line per entry
    assert DeadLetter.objects.filter(status="retried").count() == 60
