"""`manage.py jobs list|view|retry|cancel|delete` against real Postgres, Redis and RQ workers."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from rq.job import Job

from dlq.models import DeadLetter, DeadLetterStatus
from jobs import transitions
from jobs.models import AIJob, JobAttempt, JobStatus
from jobs.queues import get_queue
from tests.ops.conftest import BASE_DIR, child_env, manage, sim, submit

pytestmark = pytest.mark.django_db(transaction=True)


class Terminal(StringIO):
    """Output that says it is a terminal: progress is shown only there."""

    def isatty(self) -> bool:
        return True


def run(*args, tty: bool = False) -> str:
    out = Terminal() if tty else StringIO()
    call_command("jobs", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def snapshot() -> list[tuple]:
    return list(
        AIJob.objects.order_by("id").values_list("id", "status", "attempts", "rq_job_id", "deliveries", "updated_at")
    )


def status_of(job) -> str:
    return AIJob.objects.get(id=job.id).status


@pytest.fixture
def mixed(user, other_user, run_worker):
    """succeeded, dead (AUTH_ERROR), dead (MODEL_ERROR), queued — owned by two users."""
    ok = submit(user, prompt="A page for a bakery")
    auth = submit(user, prompt="A page for a florist", **sim(fail_attempts=9, error="auth"))
    model = submit(other_user, prompt="A page for a bike shop", **sim(fail_attempts=9, error="model_not_found"))
    run_worker()
    queued = submit(other_user, prompt="A page for a dentist", priority="high")
    return {"ok": ok, "auth": auth, "model": model, "queued": queued}


# --- list ---


def test_list_prints_an_aligned_table_newest_first(mixed):
    out = run("list")
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID",
        "STATUS",
        "PROVIDER",
        "MODEL",
        "PRIORITY",
        "ATTEMPTS",
        "AGE",
        "OWNER",
        "ERROR",
        "PROMPT",
    ]
    ids = [line.split()[0] for line in lines[1:]]
    assert ids == [str(mixed[k].id) for k in ("queued", "model", "auth", "ok")]
    status_col = lines[0].index("STATUS")
    assert [line[status_col:].split()[0] for line in lines[1:]] == ["queued", "dead", "dead", "succeeded"]
    assert "AUTH_ERROR" in lines[3] and "alice" in lines[3] and "1/3" in lines[3]


def test_list_json_is_what_the_api_returns(mixed, staff_api):
    data = json.loads(run("list", "--json"))
    assert data == staff_api.get("/api/ai/jobs").json()["results"]
    assert {item["id"] for item in data} == {str(job.id) for job in mixed.values()}


def test_list_filters_and_limit(mixed):
    dead = json.loads(run("list", "--status", "dead", "--json"))
    assert {item["id"] for item in dead} == {str(mixed["auth"].id), str(mixed["model"].id)}
    auth = json.loads(run("list", "--error-type", "AUTH_ERROR", "--json"))
    assert [item["id"] for item in auth] == [str(mixed["auth"].id)]
    local = json.loads(run("list", "--provider", "simulated", "--json"))
    assert {item["id"] for item in local} == {str(mixed["auth"].id), str(mixed["model"].id)}
    assert len(json.loads(run("list", "--limit", "1", "--json"))) == 1
    assert run("list", "--status", "canceled") == "no jobs match\n"
    assert json.loads(run("list", "--status", "canceled", "--json")) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (("--status", "bogus"), "--status must be one of"),
        (("--provider", "nope"), "--provider must be one of"),
        (("--error-type", "OOPS"), "--error-type must be one of"),
        (("--limit", "0"), "--limit must be a whole number from 1 to 1000"),
        (("--limit", "abc"), "--limit must be a whole number"),
        (("--limit", "100000"), "--limit must be a whole number"),
    ],
)
def test_list_bad_input(user, redis_conn, args, message):
    submit(user)
    with pytest.raises(CommandError, match=message):
        run("list", *args)


def list_ids(*args) -> list[str]:
    return [item["id"] for item in json.loads(run("list", "--json", *args))]


def test_list_by_owner_creation_window_and_offset(mixed, staff_api):
    ok, auth, model, queued = (str(mixed[k].id) for k in ("ok", "auth", "model", "queued"))
    assert set(list_ids("--owner", "alice")) == {ok, auth}
    assert all("bob" in line for line in run("list", "--owner", "bob").splitlines()[1:])
    created = {ok: datetime(2025, 1, 30, 23, tzinfo=UTC), auth: datetime(2025, 1, 31, 12, tzinfo=UTC)}
    created[model] = datetime(2025, 2, 1, tzinfo=UTC)  # the queued one is created now
    for job_id, moment in created.items():
        AIJob.objects.filter(id=job_id).update(created_at=moment)
    assert list_ids("--since", "2025-01-31", "--until", "2025-01-31") == [auth]  # a date as --until: all that day
    assert list_ids("--since", "2025-01-31T00:00Z", "--until", "2025-02-01T00:00:00Z") == [auth]  # exclusive
    assert list_ids("--since", "2025-01-31") == [queued, model, auth]
    assert list_ids("--until", "2025-01-31", "--owner", "alice") == [auth, ok]
    # --offset pages as the API does
    everything = list_ids()
    page = [item["id"] for item in staff_api.get("/api/ai/jobs", {"limit": 2, "offset": 1}).json()["results"]]
    assert list_ids("--limit", "2", "--offset", "1") == everything[1:3] == page
    assert list_ids("--offset", "4") == []
    assert run("list", "--owner", "bob", "--since", "2999-01-01") == "no jobs match\n"


@pytest.mark.parametrize(
    "args, message",
    [
        (("--owner", "nobody"), "--owner: unknown user 'nobody'"),
        (("--offset", "-1"), "--offset must be a whole number from 0 to 10000000, not '-1'"),
        (("--offset", "abc"), "--offset must be a whole number from 0 to 10000000, not 'abc'"),
        (("--offset", "10000001"), "--offset must be a whole number from 0 to 10000000"),
        (("--since", "yesterday"), "--since must be a date (2025-01-31) or ISO date-time"),
        (("--until", "2025-02-30"), "--until must be a date (2025-01-31) or ISO date-time"),
        (
            ("--since", "2025-02-01", "--until", "2025-01-31"),
            "--since (2025-02-01) must be before --until (2025-01-31)",
        ),
    ],
)
def test_list_owner_window_and_offset_bad_input(user, args, message):
    submit(user)
    before = snapshot()
    with pytest.raises(CommandError) as excinfo:
        run("list", *args)
    assert str(excinfo.value).startswith(message) and "\n" not in str(excinfo.value)
    assert snapshot() == before


# --- view ---


def test_view_shows_the_job_and_its_attempts(mixed):
    out = run("view", str(mixed["auth"].id))
    assert out.splitlines()[0] == f"job {mixed['auth'].id}"
    assert "AUTH_ERROR: simulated: invalid API key" in out
    assert "provider     simulated / sim-small" in out
    attempts = out[out.index("attempts\n#") :].splitlines()
    assert attempts[1].split()[:3] == ["#", "OUTCOME", "ERROR"]
    assert attempts[2].split()[:3] == ["1", "failed", "AUTH_ERROR"]
    ok = run("view", str(mixed["ok"].id))
    assert "result       page " in ok and "sections (--json shows it whole)" in ok


def test_view_json_is_what_the_api_returns(mixed, staff_api):
    for job in mixed.values():
        data = json.loads(run("view", str(job.id), "--json"))
        assert data == staff_api.get(f"/api/ai/jobs/{job.id}").json()
    assert json.loads(run("view", str(mixed["ok"].id), "--json"))["result"]["sections"]


def test_unknown_and_malformed_ids(user, redis_conn):
    job = submit(user)
    before = snapshot()
    for action in ("view", "retry", "cancel", "delete"):
        extra = ("--yes",) if action == "delete" else ()
        with pytest.raises(CommandError, match=r"job [0-9a-f-]{36} not found"):
            run(action, str(uuid.uuid4()), *extra)
        with pytest.raises(CommandError, match=r"not a valid job id: 'abc' \(expected a UUID\)"):
            run(action, "abc", *extra)
        with pytest.raises(CommandError, match="not a valid job id"):
            run(action, str(job.id)[:-1], *extra)
        with pytest.raises(CommandError, match="not a valid job id"):
            run(action, str(job.id) + "0", *extra)
    assert snapshot() == before


# --- short ids ---


def test_a_short_id_prefix_names_one_job_for_every_action(mixed, redis_conn):
    auth, queued, ok = mixed["auth"], mixed["queued"], mixed["ok"]
    assert run("view", auth.id.hex[:8]).splitlines()[0] == f"job {auth.id}"
    assert json.loads(run("view", auth.id.hex[:12].upper(), "--json"))["id"] == str(auth.id)
    assert f"job {auth.id} queued again" in run("retry", auth.id.hex[:8])
    assert run("cancel", queued.id.hex[:8]) == f"job {queued.id} canceled\n"
    assert run("delete", ok.id.hex[:8], "--yes") == f"job {ok.id} deleted\n"
    assert status_of(auth) == JobStatus.QUEUED and status_of(queued) == JobStatus.CANCELED
    assert not AIJob.objects.filter(id=ok.id).exists()


@pytest.fixture
def twins(user):
    """Two dead jobs whose ids share their first eight digits."""
    ids = ("3f2a1b2c-1111-4000-8000-000000000001", "3f2a1b2c-2222-4000-8000-000000000002")
    for job_id in ids:
        AIJob.objects.create(
            id=job_id, owner=user, provider="local", model="local-page", prompt="p", status=JobStatus.DEAD
        )
    return ids


@pytest.mark.parametrize("action", ["view", "retry", "cancel", "delete"])
@pytest.mark.parametrize(
    "value, message",
    [
        ("3f2a1b2c", "job id prefix 3f2a1b2c is ambiguous (3f2a1b2c-1111-4000-8000-000000000001, "
                     "3f2a1b2c-2222-4000-8000-000000000002): give more digits"),
        ("3f2a1b2d", "no job id starts with 3f2a1b2d"),
        ("3f2", "not a valid job id: '3f2' (expected a UUID); a short id is its first 4 or more hex digits"),
        ("3f2a1b2c-1111", "not a valid job id: '3f2a1b2c-1111' (expected a UUID)"),
    ],
)  # fmt: skip
def test_an_ambiguous_unknown_or_short_prefix_is_refused_and_changes_nothing(twins, action, value, message):
    before = snapshot()
    with pytest.raises(CommandError) as excinfo:
        run(action, value, *(("--yes",) if action == "delete" else ()))
    assert str(excinfo.value).startswith(message) and "\n" not in str(excinfo.value)
    assert snapshot() == before
    assert run("view", "3f2a1b2c2").splitlines()[0] == f"job {twins[1]}"  # nothing lost: one digit more works


def test_an_ambiguous_prefix_on_the_command_line_is_one_line_and_exit_1(twins):
    result = manage("jobs", "view", "3f2a")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("CommandError: job id prefix 3f2a is ambiguous")


# --- retry / cancel ---


def test_retry_one_dead_job_runs_it_again(mixed, run_worker, settings):
    job = mixed["auth"]
    out = run("retry", str(job.id))
    assert f"job {job.id} queued again" in out
    row = AIJob.objects.get(id=job.id)
    assert row.status == JobStatus.QUEUED and row.budget_base == 1
    assert get_queue("ai-default").job_ids[-1] == row.rq_job_id
    assert DeadLetter.objects.get(job_uuid=job.id).status == DeadLetterStatus.RETRIED
    run_worker()
    # fail_attempts=9 keeps failing with AUTH_ERROR: dead again after one more attempt
    row.refresh_from_db()
    assert row.status == JobStatus.DEAD and row.attempts == 2


def test_retry_and_cancel_refuse_the_wrong_state_and_change_nothing(mixed):
    before = snapshot()
    with pytest.raises(CommandError, match="is succeeded; only dead or canceled jobs can be retried"):
        run("retry", str(mixed["ok"].id))
    with pytest.raises(CommandError, match="is queued; only dead or canceled jobs can be retried"):
        run("retry", str(mixed["queued"].id))
    with pytest.raises(CommandError, match="is dead; only queued or retrying jobs can be canceled"):
        run("cancel", str(mixed["auth"].id))
    assert snapshot() == before


def test_cancel_a_queued_job_removes_its_rq_job(mixed, redis_conn, run_worker):
    job = mixed["queued"]
    rq_id = AIJob.objects.get(id=job.id).rq_job_id
    assert Job.exists(rq_id, connection=redis_conn)
    assert run("cancel", str(job.id)) == f"job {job.id} canceled\n"
    assert status_of(job) == JobStatus.CANCELED
    assert not Job.exists(rq_id, connection=redis_conn) and get_queue("ai-high").count == 0
    run_worker()
    assert JobAttempt.objects.filter(job_id=job.id).count() == 0
    # and a canceled job can be retried from the command line
    run("retry", str(job.id))
    run_worker()
    assert status_of(job) == JobStatus.SUCCEEDED


# --- bulk retry ---


def test_bulk_retry_of_dead_jobs_by_error_type(mixed, run_worker):
    before = snapshot()
    out = run("retry", "--status", "dead", "--error-type", "AUTH_ERROR", "--dry-run")
    assert out == "would retry 1 dead jobs (dry run: nothing changed)\n"
    assert snapshot() == before

    out = run("retry", "--status", "dead", "--error-type", "AUTH_ERROR", "--yes")
    assert out.strip() == "retried 1 of 1 dead jobs"
    assert status_of(mixed["auth"]) == JobStatus.QUEUED
    assert status_of(mixed["model"]) == JobStatus.DEAD
    assert DeadLetter.objects.get(job_uuid=mixed["auth"].id).status == DeadLetterStatus.RETRIED
    assert DeadLetter.objects.get(job_uuid=mixed["model"].id).status == DeadLetterStatus.OPEN

    out = run("retry", "--status", "dead", "--yes")
    assert out.strip() == "retried 1 of 1 dead jobs"  # the MODEL_ERROR one; the other is queued now
    assert status_of(mixed["model"]) == JobStatus.QUEUED


def test_bulk_retry_since(mixed):
    before = snapshot()
    assert run("retry", "--status", "dead", "--since", "2999-01-01", "--yes").strip() == "retried 0 of 0 dead jobs"
    assert snapshot() == before
    assert (
        run("retry", "--status", "dead", "--since", "2000-01-01T00:00:00Z", "--yes").strip()
        == "retried 2 of 2 dead jobs"
    )


def test_bulk_retry_of_many_shows_progress_and_each_job_is_retried_once(user, run_worker):
    jobs = [submit(user, prompt=f"page {i}", **sim(fail_attempts=1, error="auth")) for i in range(60)]
    run_worker()
    assert AIJob.objects.filter(status=JobStatus.DEAD).count() == 60

    out = run("retry", "--status", "dead", "--yes", tty=True)

    lines = out.splitlines()
    assert lines[0] == "retrying: 1/60 (1%)" and "retrying: 60/60 (100%)" in lines
    assert 5 <= sum(line.startswith("retrying:") for line in lines) <= 12
    assert lines[-1] == "retried 60 of 60 dead jobs"
    run_worker()
    for job in jobs:
        row = AIJob.objects.get(id=job.id)
        assert row.status == JobStatus.SUCCEEDED and row.attempts == 2
        assert list(JobAttempt.objects.filter(job=row).values_list("outcome", flat=True)) == ["failed", "succeeded"]


def test_bulk_retry_without_yes_refuses_when_stdin_is_not_a_terminal(mixed):
    before = snapshot()
    with pytest.raises(CommandError) as excinfo:
        run("retry", "--status", "dead")
    assert str(excinfo.value) == "refusing to retry every dead job without --yes (stdin is not a terminal)"
    assert snapshot() == before


def test_bulk_retry_on_a_terminal_asks_first(mixed):
    auth, model = mixed["auth"], mixed["model"]
    args = ["jobs", "retry", "--status", "dead", "--error-type", "AUTH_ERROR"]
    code, output = _run_on_a_terminal(args, b"n\n")
    assert "Retry 1 dead jobs? [y/N]" in output
    assert code == 1 and "CommandError: nothing retried" in output
    assert status_of(auth) == JobStatus.DEAD

    code, output = _run_on_a_terminal(args, b"y\n")
    assert code == 0 and "retried 1 of 1 dead jobs" in output
    assert "retrying:" not in output  # one job: too few for progress lines
    assert status_of(auth) == JobStatus.QUEUED and status_of(model) == JobStatus.DEAD


@pytest.mark.parametrize(
    "args, message",
    [
        (("retry",), "give a job ID, or --status dead"),
        (("retry", "--status", "running"), "--status must be one of dead, canceled"),
        (("retry", "--status", "dead", "--error-type", "NOPE"), "--error-type must be one of"),
        (("retry", "--status", "dead", "--since", "yesterday"), "--since must be a date"),
        (("retry", "--status", "dead", "--since", "2025-13-45"), "--since must be a date"),
        (("retry", "00000000-0000-0000-0000-000000000000", "--status", "dead"), "not both"),
        (("retry", "--error-type", "AUTH_ERROR"), "give a job ID, or --status dead"),
    ],
)
def test_bulk_retry_bad_input_changes_nothing(mixed, args, message):
    before = snapshot()
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert snapshot() == before


# --- delete ---


def test_delete_with_yes(mixed, redis_conn):
    job = mixed["queued"]
    rq_id = AIJob.objects.get(id=job.id).rq_job_id
    assert run("delete", str(job.id), "--yes") == f"job {job.id} deleted\n"
    assert not AIJob.objects.filter(id=job.id).exists()
    assert not Job.exists(rq_id, connection=redis_conn)
    # the dead letter outlives its job
    run("delete", str(mixed["auth"].id), "--yes")
    assert DeadLetter.objects.filter(job_uuid=mixed["auth"].id).exists()


def test_delete_without_yes_refuses_when_stdin_is_not_a_terminal(mixed):
    before = snapshot()
    with pytest.raises(CommandError, match=r"refusing to delete job .* without --yes \(stdin is not a terminal\)"):
        run("delete", str(mixed["ok"].id))
    assert snapshot() == before


def test_delete_refuses_a_running_job(mixed, redis_conn):
    job = mixed["queued"]
    assert transitions.job_claim(job_id=str(job.id), rq_job_id=AIJob.objects.get(id=job.id).rq_job_id)
    before = snapshot()
    with pytest.raises(CommandError, match="is running"):
        run("delete", str(job.id), "--yes")
    assert snapshot() == before


def _run_on_a_terminal(args: list[str], answer: bytes, timeout: float = 60) -> tuple[int, str]:
    """Run manage.py with its stdin and stdout on a pseudo-terminal, type `answer`, return (exit code, output)."""
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=child_env(),
        stdin=child,
        stdout=child,
        stderr=child,
        close_fds=True,
    )
    os.close(child)
    output = b""
    deadline = time.monotonic() + timeout
    answered = False
    while proc.poll() is None or not answered:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no prompt within {timeout}s: {output!r}")
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        output += chunk
        if not answered and b"[y/N]" in output:
            os.write(main, answer)
            answered = True
    try:
        while chunk := os.read(main, 4096):
            output += chunk
    except OSError:
        pass
    os.close(main)
    return proc.wait(timeout=timeout), output.decode(errors="replace")


def test_delete_on_a_terminal_asks_first(mixed):
    job = mixed["ok"]
    code, output = _run_on_a_terminal(["jobs", "delete", str(job.id)], b"n\n")
    assert "Delete job" in output and "succeeded, owner alice" in output and "[y/N]" in output
    assert code == 1 and "CommandError: not deleted" in output
    assert AIJob.objects.filter(id=job.id).exists()

    code, output = _run_on_a_terminal(["jobs", "delete", str(job.id)], b"y\n")
    assert code == 0 and f"job {job.id} deleted" in output
    assert not AIJob.objects.filter(id=job.id).exists()


# --- the command line itself: exit code and one line on stderr ---


@pytest.mark.parametrize(
    "args, message",
    [
        (["jobs", "view", "not-a-uuid"], "CommandError: not a valid job id: 'not-a-uuid' (expected a UUID)"),
        (["jobs", "cancel", "6f1c1a2e-0000-4000-8000-000000000000"], "CommandError: job 6f1c1a2e-"),
        (["jobs", "list", "--status", "nope"], "CommandError: --status must be one of"),
        (["queue", "clear", "--status", "active", "--yes"], "CommandError: --status must be one of waiting"),
    ],
)
def test_bad_input_on_the_command_line_is_one_line_on_stderr_and_a_non_zero_exit(args, message, db):
    result = manage(*args)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(message)
