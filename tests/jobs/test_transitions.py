"""jobs.transitions, the state machine: each transition wins from its states and changes nothing from any
other, a stale delivery or attempt wins nothing, and no other module writes AIJob.status.

Jobs reach each state the real way — submitted, run by the pipeline in this process, claimed, canceled —
so the states are the ones the service produces. Most tests run in the test's transaction (nothing is
committed, so nothing is enqueued unless a test runs the on-commit callbacks itself).
"""

from __future__ import annotations

import ast
import re
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings as django_settings
from django.db import IntegrityError, connections, transaction
from django.utils import timezone
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from aipb.exceptions import Conflict
from jobs import actions, pipeline, transitions
from jobs.errors import Classified, ErrorType
from jobs.models import AIJob, AttemptOutcome, JobAttempt, JobStatus
from jobs.queues import get_queue
from jobs.transitions import AttemptRecord
from tests.factories import submit_job

ROOT = Path(__file__).resolve().parents[2]
ALL_STATES = tuple(JobStatus)
WAITING = (JobStatus.QUEUED, JobStatus.RETRYING)
UNAVAILABLE = Classified(type=ErrorType.SERVICE_UNAVAILABLE, retryable=True, message="simulated: service unavailable")


def make(state: str, owner, **kwargs) -> AIJob:
    """A job in `state`, brought there by the services that put jobs there."""
    if state == JobStatus.RETRYING:
        job = submit_job(owner, simulate={"fail_attempts": 1, "error": "unavailable"}, **kwargs)
    elif state == JobStatus.DEAD:
        job = submit_job(owner, simulate={"fail_attempts": 1, "error": "auth"}, **kwargs)
    else:
        job = submit_job(owner, **kwargs)
    if state == JobStatus.RUNNING:
        assert transitions.job_claim(job_id=str(job.id), rq_job_id=job.rq_job_id) is not None
    elif state in (JobStatus.SUCCEEDED, JobStatus.RETRYING, JobStatus.DEAD):
        outcome = pipeline.run_attempt(str(job.id), job.rq_job_id)
        assert outcome.startswith(str(state)), outcome
    elif state == JobStatus.CANCELED:
        actions.job_cancel(job_id=job.id)
    job.refresh_from_db()
    assert job.status == state
    return job


def row(job: AIJob) -> dict:
    """Every column of the job as stored (a refused transition must leave each one alone)."""
    return AIJob.objects.filter(id=job.id).values().get()


def record(job: AIJob, *, number: int | None = None) -> AttemptRecord:
    """What an attempt of `job` brings back; by default the attempt that holds it now."""
    now = timezone.now()
    return AttemptRecord(
        number=job.attempts if number is None else number,
        started_at=job.started_at or now,
        finished_at=now,
        latency_ms=120,
        usage=None,
        request_id="req-1",
        validation_passed=None,
    )


def enqueued(rq_job_id: str) -> bool:
    return Job.exists(rq_job_id, connection=get_queue("ai-default").connection)


@pytest.fixture(autouse=True)
def _redis(redis_conn):
    """The pipeline and the on-commit enqueues talk to the test Redis; each test starts with it empty."""


# --------------------------------------------------------------------------- claim


@pytest.mark.parametrize("state", ALL_STATES)
def test_claim_wins_only_from_a_waiting_state(db, user, state):
    job = make(state, user)
    before = row(job)

    claimed = transitions.job_claim(job_id=str(job.id), rq_job_id=job.rq_job_id)

    if state not in WAITING:
        assert claimed is None and row(job) == before
        return
    assert claimed is not None and claimed.status == JobStatus.RUNNING
    assert claimed.attempts == before["attempts"] + 1 and claimed.next_attempt_at is None
    lease = (claimed.lease_expires_at - claimed.started_at).total_seconds()
    assert lease == pytest.approx(django_settings.AI_LEASE_SECONDS)
    assert row(job)["status"] == JobStatus.RUNNING


def test_a_claimed_job_cannot_be_claimed_again(db, user):
    job = submit_job(user)
    assert transitions.job_claim(job_id=str(job.id), rq_job_id=job.rq_job_id) is not None
    assert transitions.job_claim(job_id=str(job.id), rq_job_id=job.rq_job_id) is None
    assert pipeline.run_attempt(str(job.id), job.rq_job_id).startswith("skipped")


def test_a_stale_delivery_claims_nothing(db, user):
    job = submit_job(user)
    stale = job.rq_job_id
    assert transitions.delivery_replace(job)  # reconcile gave it a new delivery
    before = row(job)

    assert transitions.job_claim(job_id=str(job.id), rq_job_id=stale) is None
    assert pipeline.run_attempt(str(job.id), stale) == "skipped: nothing to claim"
    assert row(job) == before
    assert transitions.job_claim(job_id=str(job.id), rq_job_id=job.rq_job_id) is not None


@pytest.mark.django_db(transaction=True)
def test_cancel_racing_a_claim_has_exactly_one_winner(user):
    for _ in range(20):
        job = submit_job(user)
        barrier = threading.Barrier(2)
        results = {}

        def claim(job=job, barrier=barrier, results=results):
            barrier.wait()
            results["claim"] = transitions.job_claim(job_id=str(job.id), rq_job_id=job.rq_job_id) is not None
            connections.close_all()

        def cancel(job=job, barrier=barrier, results=results):
            barrier.wait()
            try:
                actions.job_cancel(job_id=job.id)
                results["cancel"] = True
            except Exception:
                results["cancel"] = False
            connections.close_all()

        threads = [threading.Thread(target=claim), threading.Thread(target=cancel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results["claim"] != results["cancel"], results
        job.refresh_from_db()
        assert job.status == (JobStatus.RUNNING if results["claim"] else JobStatus.CANCELED)
    assert connections["default"].vendor == "postgresql"


# --------------------------------------------------------------------------- a new delivery for a waiting job


@pytest.mark.parametrize("state", ALL_STATES)
def test_delivery_replace_wins_only_for_a_waiting_job(db, user, state, django_capture_on_commit_callbacks):
    job = make(state, user)
    before = row(job)

    with django_capture_on_commit_callbacks(execute=True):
        replaced = transitions.delivery_replace(job, delay=30)

    if state not in WAITING:
        assert replaced is False and row(job) == before
        return
    after = row(job)
    assert replaced and after["status"] == state and after["attempts"] == before["attempts"]
    assert after["deliveries"] == before["deliveries"] + 1 and after["rq_job_id"] == f"{job.id}_{after['deliveries']}"
    # scheduled, not queued: the delay is the rate limiter's wait or a retry's backoff
    assert job.rq_job_id in ScheduledJobRegistry(queue=get_queue("ai-default")).get_job_ids()
    assert get_queue("ai-default").job_ids == []


def test_delivery_replace_with_a_stale_pointer_changes_nothing(db, user):
    job = submit_job(user)
    seen_by_first = AIJob.objects.get(id=job.id)
    seen_by_second = AIJob.objects.get(id=job.id)
    assert transitions.delivery_replace(seen_by_first)  # two reconcile runs saw the same lost delivery
    before = row(job)

    assert transitions.delivery_replace(seen_by_second) is False
    assert row(job) == before and before["deliveries"] == 2


# --------------------------------------------------------------------------- the end of a running attempt


def _succeed(job, rec):
    return transitions.job_succeed(job=job, record=rec, page={"title": "A page", "sections": []})


def _retry(job, rec):
    return transitions.job_retry_later(job=job, record=rec, error=UNAVAILABLE, delay=2.0)


def _die(job, rec):
    return transitions.job_die(job=job, record=rec, error=UNAVAILABLE)


ENDS = {JobStatus.SUCCEEDED: _succeed, JobStatus.RETRYING: _retry, JobStatus.DEAD: _die}


@pytest.mark.parametrize("end", list(ENDS))
@pytest.mark.parametrize("state", ALL_STATES)
def test_an_attempt_ends_a_job_only_while_it_holds_it(db, user, state, end):
    job = make(state, user)
    before = row(job)
    attempts_before = list(JobAttempt.objects.filter(job=job).values())

    won = ENDS[end](job, record(job))

    if state != JobStatus.RUNNING:
        assert won is False and row(job) == before
        assert list(JobAttempt.objects.filter(job=job).values()) == attempts_before, "no attempt row without it"
        return
    after = row(job)
    assert won and after["status"] == end and after["lease_expires_at"] is None
    # the attempt's row, written by the same statement as the change
    [attempt] = JobAttempt.objects.filter(job=job).values("number", "outcome", "error_type", "latency_ms")
    outcome = AttemptOutcome.SUCCEEDED if end == JobStatus.SUCCEEDED else AttemptOutcome.FAILED
    error_type = "" if end == JobStatus.SUCCEEDED else "SERVICE_UNAVAILABLE"
    assert attempt == {"number": before["attempts"], "outcome": outcome, "error_type": error_type, "latency_ms": 120}
    assert after["attempts"] == before["attempts"]  # the claim counted the attempt, the end does not
    if end == JobStatus.SUCCEEDED:
        assert after["result"]["title"] == "A page" and after["finished_at"] and after["error_type"] == ""
    elif end == JobStatus.RETRYING:
        assert (after["error_type"], after["finished_at"], after["result"]) == ("SERVICE_UNAVAILABLE", None, None)
        assert after["next_attempt_at"] > after["updated_at"] and after["rq_job_id"] == f"{job.id}_2"
    else:
        assert (after["error_type"], after["result"]) == ("SERVICE_UNAVAILABLE", None) and after["finished_at"]


@pytest.mark.parametrize("end", list(ENDS))
def test_an_attempt_that_lost_its_lease_ends_nothing(db, user, end, settings):
    """Attempt 1's worker comes back after reconcile took the job back and attempt 2 claimed it."""
    job = make(JobStatus.RUNNING, user)
    first = record(job)
    expiry = transitions.job_expire_lease(job_id=job.id, now=timezone.now() + timedelta(seconds=3600))
    assert expiry is not None and expiry.status == JobStatus.RETRYING
    job.refresh_from_db()
    assert transitions.job_claim(job_id=str(job.id), rq_job_id=job.rq_job_id) is not None
    job.refresh_from_db()
    before = row(job)

    attempts_before = list(JobAttempt.objects.filter(job=job).values())
    assert ENDS[end](job, first) is False
    assert row(job) == before and before["status"] == JobStatus.RUNNING and before["attempts"] == 2
    assert list(JobAttempt.objects.filter(job=job).values()) == attempts_before, "no row for the late end"


def test_a_retry_is_delivered_after_its_delay_on_commit(db, user, django_capture_on_commit_callbacks):
    job = make(JobStatus.RUNNING, user)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert _retry(job, record(job))
    assert not enqueued(job.rq_job_id), "nothing reaches Redis before the commit"
    for callback in callbacks:
        callback()
    assert job.rq_job_id in ScheduledJobRegistry(queue=get_queue("ai-default")).get_job_ids()


def test_attempt_rows_one_per_attempt_and_an_abandoned_one_completed_later(db, user):
    job = make(JobStatus.RUNNING, user)
    rec = record(job)
    assert transitions.attempt_save(job=job, record=rec, outcome=AttemptOutcome.FAILED, error=UNAVAILABLE)
    with pytest.raises(IntegrityError, match="jobattempt_job_number"), transaction.atomic():
        transitions.attempt_save(job=job, record=rec, outcome=AttemptOutcome.FAILED, error=UNAVAILABLE)

    other = make(JobStatus.RUNNING, user)
    expiry = transitions.job_expire_lease(job_id=other.id, now=timezone.now() + timedelta(seconds=3600))
    assert expiry.attempt_recorded
    late = record(other, number=1)
    # the worker that comes back late fills in what recovery could not know; the row stays one row
    assert transitions.attempt_save(job=other, record=late, outcome=AttemptOutcome.ABANDONED, error=None) is False
    [attempt] = JobAttempt.objects.filter(job=other)
    assert (attempt.outcome, attempt.latency_ms, attempt.provider_request_id) == ("abandoned", 120, "req-1")


# --------------------------------------------------------------------------- lease expiry


def test_an_expired_lease_with_attempts_left_retries(db, user, django_capture_on_commit_callbacks):
    job = make(JobStatus.RUNNING, user, max_attempts=2)
    assert transitions.job_expire_lease(job_id=job.id, now=timezone.now()) is None, "the lease still runs"
    now = job.lease_expires_at + timedelta(seconds=1)

    with django_capture_on_commit_callbacks(execute=True):
        expiry = transitions.job_expire_lease(job_id=job.id, now=now)

    assert expiry.status == JobStatus.RETRYING and expiry.attempt_recorded
    assert (expiry.error.type, expiry.error.retryable) == (ErrorType.TIMEOUT, True)
    after = row(job)
    assert after["status"] == JobStatus.RETRYING and after["lease_expires_at"] is None
    assert after["next_attempt_at"] == now and after["finished_at"] is None and after["error_type"] == "TIMEOUT"
    assert after["rq_job_id"] == f"{job.id}_2" and enqueued(after["rq_job_id"])
    [attempt] = JobAttempt.objects.filter(job=job)
    assert (attempt.number, attempt.outcome, attempt.error_type) == (1, "abandoned", "TIMEOUT")
    assert transitions.job_expire_lease(job_id=job.id, now=now) is None, "a second reconcile finds nothing"


def test_an_expired_lease_without_attempts_left_dies(db, user, django_capture_on_commit_callbacks):
    job = make(JobStatus.RUNNING, user, max_attempts=1)
    now = job.lease_expires_at + timedelta(seconds=1)

    with django_capture_on_commit_callbacks(execute=True):
        expiry = transitions.job_expire_lease(job_id=job.id, now=now)

    assert expiry.status == JobStatus.DEAD
    after = row(job)
    assert (after["status"], after["finished_at"], after["error_type"]) == (JobStatus.DEAD, now, "TIMEOUT")
    assert after["rq_job_id"] == job.rq_job_id and not enqueued(f"{job.id}_2")
    assert JobAttempt.objects.get(job=job).outcome == AttemptOutcome.ABANDONED
    assert transitions.job_expire_lease(job_id=job.id, now=now) is None


@pytest.mark.parametrize("state", [s for s in ALL_STATES if s != JobStatus.RUNNING])
def test_only_a_running_job_has_a_lease_to_expire(db, user, state):
    job = make(state, user)
    before = row(job)
    assert transitions.job_expire_lease(job_id=job.id, now=timezone.now() + timedelta(days=1)) is None
    assert row(job) == before


# --------------------------------------------------------------------------- operator transitions


@pytest.mark.parametrize("state", ALL_STATES)
def test_cancel_wins_only_for_a_waiting_job(db, user, state, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = make(state, user)
    delivery = row(job)["rq_job_id"]
    before = row(job)

    with django_capture_on_commit_callbacks(execute=True):
        canceled = transitions.job_cancel_waiting(job=AIJob.objects.get(id=job.id))

    if state not in WAITING:
        assert canceled is False and row(job) == before
        return
    after = row(job)
    assert canceled and after["status"] == JobStatus.CANCELED and after["finished_at"]
    assert (after["rq_job_id"], after["next_attempt_at"]) == ("", None)
    assert not enqueued(delivery), "its delivery is removed after the commit"


def test_cancel_deliveries_cancels_only_jobs_still_waiting_on_them(db, user):
    waiting = submit_job(user)
    replaced = submit_job(user)
    stale = replaced.rq_job_id
    assert transitions.delivery_replace(replaced)
    running = make(JobStatus.RUNNING, user)
    retrying = make(JobStatus.RETRYING, user)
    before = {job.id: row(job) for job in (replaced, running)}

    canceled = transitions.jobs_cancel_deliveries(
        rq_job_ids=[waiting.rq_job_id, stale, running.rq_job_id, retrying.rq_job_id, "not-a-job-id"]
    )

    assert sorted(canceled) == sorted(
        (str(job.id), "local", "local-page") if job is waiting else (str(job.id), "simulated", "sim-small")
        for job in (waiting, retrying)
    )
    assert {job.id: row(job) for job in (replaced, running)} == before
    assert transitions.jobs_cancel_deliveries(rq_job_ids=[]) == []


@pytest.mark.parametrize("state", ALL_STATES)
def test_requeue_wins_only_for_a_dead_or_canceled_job(db, user, state):
    job = make(state, user)
    before = row(job)

    requeued = transitions.job_requeue(job=AIJob.objects.get(id=job.id))

    if state not in (JobStatus.DEAD, JobStatus.CANCELED):
        assert requeued is False and row(job) == before
        return
    after = row(job)
    assert requeued and after["status"] == JobStatus.QUEUED
    assert after["budget_base"] == after["attempts"] == before["attempts"], "a fresh budget from here"
    assert (after["error_type"], after["error_message"], after["result"], after["finished_at"]) == ("", "", None, None)
    assert after["deliveries"] == before["deliveries"] + 1


def test_requeue_from_a_stale_read_changes_nothing(db, user):
    """Two operators retry one dead job; the first retry runs and the job dies again before the second
    one's request is handled: the second read the job before all that, and must not retry it a second time."""
    job = submit_job(user, simulate={"fail_attempts": 9, "error": "auth"})
    assert pipeline.run_attempt(str(job.id), job.rq_job_id).startswith("dead")
    second_operator_saw = AIJob.objects.get(id=job.id)
    assert transitions.job_requeue(job=AIJob.objects.get(id=job.id))
    job.refresh_from_db()
    assert pipeline.run_attempt(str(job.id), job.rq_job_id).startswith("dead")
    before = row(job)

    assert transitions.job_requeue(job=second_operator_saw) is False
    assert row(job) == before and before["status"] == JobStatus.DEAD


def test_a_refused_operator_transition_is_a_conflict_for_the_caller(db, user):
    job = make(JobStatus.SUCCEEDED, user)
    with pytest.raises(Conflict):
        actions.job_cancel(job_id=job.id)
    with pytest.raises(Conflict):
        actions.job_retry(job_id=job.id)


# --------------------------------------------------------------------------- the one writer of AIJob.status

APP_PACKAGES = ("aipb", "jobs", "dlq", "usage", "monitoring")
THE_WRITER = "jobs/transitions.py"
ORM_WRITES = {"update", "create", "get_or_create", "update_or_create", "bulk_create", "bulk_update"}
# the table named as it is, or through a quoting call: f"UPDATE {quote(AIJob._meta.db_table)} ..."
RAW_WRITE = re.compile(r"\b(?:update|insert\s+into)\s+[\"'{]*\s*(?:\w+\(\s*)?(?:jobs_aijob|AIJob)\b", re.IGNORECASE)
AIJOB_MARKS = {"AIJob", "ai_jobs"}  # the model and its reverse accessor from the owner


@dataclass(frozen=True)
class StatusWrite:
    path: str
    line: int
    function: str
    how: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} in {self.function}(): {self.how}"


def _chain(node: ast.AST) -> tuple[str | None, set[str]]:
    """The name a call/attribute chain starts from, and every attribute name along it."""
    attrs: set[str] = set()
    while True:
        if isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Attribute):
            attrs.add(node.attr)
            node = node.value
        elif isinstance(node, ast.Subscript):
            node = node.value
        else:
            return (node.id if isinstance(node, ast.Name) else None), attrs


class _StatusWrites(ast.NodeVisitor):
    """Finds writes of AIJob.status in one module, whatever the technique: an ORM write naming `status` (or
    splatting unknown fields into one on AIJob), raw SQL updating the table, an assignment to `.status`,
    save(update_fields=[... "status" ...]), setattr(..., "status", ...)."""

    def __init__(self, path: str, tree: ast.Module) -> None:
        self.path = path
        self.found: list[StatusWrite] = []
        self.function = "<module>"
        self.classes: list[str] = []
        other_models = {model.__name__ for model in apps.get_models()} - {"AIJob"}
        self.aijob_names, self.other_names = self._bound_names(tree, other_models)

    def _bound_names(self, tree: ast.Module, other_models: set[str]) -> tuple[set[str], set[str]]:
        """Names that hold an AIJob queryset/manager/instance or another model's, followed through assignments
        (`claimed = AIJob.objects.filter(...)`; `claimed.update(...)`) and annotations (`job: AIJob`)."""
        aijob, other = set(AIJOB_MARKS), set(other_models)
        bindings: list[tuple[str, ast.AST]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                targets = [t for target in node.targets for t in ast.walk(target) if isinstance(t, ast.Name)]
                bindings += [(t.id, node.value) for t in targets]
            elif isinstance(node, (ast.AnnAssign, ast.arg)) and node.annotation is not None:
                name = node.target.id if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) else None
                name = node.arg if isinstance(node, ast.arg) else name
                if name and "AIJob" in ast.unparse(node.annotation):
                    aijob.add(name)
            elif isinstance(node, ast.NamedExpr):
                bindings.append((node.target.id, node.value))
        changed = True
        while changed:
            changed = False
            for name, value in bindings:
                root, attrs = _chain(value)
                if name not in aijob and (root in aijob or attrs & AIJOB_MARKS):
                    aijob.add(name)
                    changed = True
                elif name not in other and name not in aijob and root in other:
                    other.add(name)
                    changed = True
        return aijob, other

    def _add(self, node: ast.AST, how: str) -> None:
        self.found.append(StatusWrite(self.path, node.lineno, self.function, how))

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        outer, self.function = self.function, node.name
        self.generic_visit(node)
        self.function = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.classes.append(node.name)
        self.generic_visit(node)
        self.classes.pop()

    def _receiver(self, node: ast.AST) -> str:
        root, attrs = _chain(node)
        if root in self.aijob_names or attrs & AIJOB_MARKS:
            return "AIJob"
        return "other" if root in self.other_names else "unknown"

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        names_status = any(kw.arg == "status" for kw in node.keywords)
        splats = any(kw.arg is None for kw in node.keywords)
        if isinstance(func, ast.Attribute) and func.attr in ORM_WRITES:
            receiver = self._receiver(func.value)
            if func.attr in ("get_or_create", "update_or_create"):
                names_status = names_status or any(
                    kw.arg in ("defaults", "create_defaults") and _mentions_status(kw.value) for kw in node.keywords
                )
            if func.attr == "bulk_update":
                names_status = any(_mentions_status(arg) for arg in [*node.args, *(k.value for k in node.keywords)])
            if (names_status and receiver != "other") or (splats and receiver == "AIJob"):
                self._add(node, f"{ast.unparse(func)}({'status=...' if names_status else '**fields'}) on {receiver}")
        elif (isinstance(func, ast.Name) and func.id == "AIJob") or (
            isinstance(func, ast.Attribute) and func.attr == "AIJob"
        ):
            if names_status:
                self._add(node, "AIJob(status=...)")
        if isinstance(func, ast.Attribute) and func.attr == "save":
            if any(kw.arg == "update_fields" and _mentions_status(kw.value) for kw in node.keywords):
                self._add(node, "save(update_fields=[... 'status' ...])")
        if isinstance(func, ast.Name) and func.id == "setattr" and len(node.args) >= 2:
            if isinstance(node.args[1], ast.Constant) and node.args[1].value == "status":
                self._add(node, "setattr(..., 'status', ...)")
        self.generic_visit(node)

    def _assigned(self, targets: list[ast.AST], node: ast.AST) -> None:
        for target in targets:
            for part in ast.walk(target):
                if isinstance(part, ast.Attribute) and part.attr == "status":
                    on_self = isinstance(part.value, ast.Name) and part.value.id == "self"
                    if not on_self or (self.classes and self.classes[-1] == "AIJob"):
                        self._add(node, f"{ast.unparse(part)} = ...")

    def visit_Assign(self, node: ast.Assign) -> None:
        self._assigned(node.targets, node)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._assigned([node.target], node)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._assigned([node.target], node)
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and RAW_WRITE.search(node.value):
            self._add(node, "raw SQL writing jobs_aijob")

    def visit_JoinedStr(self, node: ast.JoinedStr) -> None:
        if RAW_WRITE.search(ast.unparse(node)):  # f"UPDATE {AIJob._meta.db_table} ..."
            self._add(node, "raw SQL writing jobs_aijob")
        else:
            self.generic_visit(node)


def _mentions_status(node: ast.AST) -> bool:
    return any(isinstance(part, ast.Constant) and part.value == "status" for part in ast.walk(node))


def status_writes(source: str, path: str = "<snippet>") -> list[StatusWrite]:
    tree = ast.parse(source)
    finder = _StatusWrites(path, tree)
    finder.visit(tree)
    return finder.found


def app_modules(root: Path = ROOT) -> list[Path]:
    return sorted(
        path
        for package in APP_PACKAGES
        for path in (root / package).rglob("*.py")
        if "migrations" not in path.relative_to(root).parts
    )


def writes_outside_transitions(root: Path = ROOT) -> list[StatusWrite]:
    found = []
    for path in app_modules(root):
        relative = path.relative_to(root).as_posix()
        if relative != THE_WRITER:
            found += status_writes(path.read_text(), relative)
    return found


def test_no_module_but_transitions_writes_aijob_status():
    assert len(app_modules()) > 50
    assert writes_outside_transitions() == [], "AIJob.status is written only in jobs/transitions.py"


def test_the_scan_sees_every_technique_the_writer_itself_uses():
    """Run over jobs/transitions.py, the scan finds each function that changes a status, whatever way it does."""
    found = status_writes((ROOT / THE_WRITER).read_text(), THE_WRITER)
    assert {write.function for write in found} >= {
        "claim_sql",  # raw UPDATE ... RETURNING, written once (job_claim and jobs.admission.attempt_claim run it)
        "_finish_sql",  # raw WITH ... UPDATE ... RETURNING, built once per set of columns
        "job_expire_lease",  # .update(status=...) through a variable, and the in-memory job.status
        "job_cancel_waiting",
        "jobs_cancel_deliveries",  # raw UPDATE ... FROM unnest(...)
        "job_requeue",
    }
    assert "delivery_replace" not in {write.function for write in found}, "it moves the delivery, not the status"


@pytest.mark.parametrize(
    "snippet",
    [
        "AIJob.objects.filter(id=job_id).update(status=JobStatus.CANCELED)",
        "qs = AIJob.objects.filter(id=job_id)\nqs.update(status='dead')",
        "AIJob.objects.filter(id=job_id).update(**{'status': 'dead'})",
        "models.AIJob.objects.filter(id=job_id).update(status='dead')",
        "owner.ai_jobs.filter(status='queued').update(status='canceled')",
        "jobs_of(owner).update(status='canceled')",  # unknown receiver: refused unless it is another model's
        "def f(job: AIJob):\n    job.status = JobStatus.DEAD\n    job.save()",
        "job.status, job.error_type = 'dead', 'TIMEOUT'",
        "job.save(update_fields=['status', 'updated_at'])",
        "setattr(job, 'status', 'dead')",
        "AIJob.objects.bulk_update(jobs, ['status'])",
        "AIJob.objects.update_or_create(id=job_id, defaults={'status': 'queued'})",
        "AIJob.objects.create(owner=owner, prompt='x', status='succeeded')",
        "AIJob(owner=owner, prompt='x', status='succeeded').save()",
        "cursor.execute(\"UPDATE jobs_aijob SET status = 'dead' WHERE id = %s\", [job_id])",
        "AIJob.objects.raw(f'update {AIJob._meta.db_table} set status = %s', ['dead'])",
        "cursor.execute(f'UPDATE {quote(AIJob._meta.db_table)} SET status = %s', ['dead'])",
        "class AIJob(models.Model):\n    def kill(self):\n        self.status = 'dead'",
    ],
)
def test_the_scan_catches_a_status_write(snippet):
    assert len(status_writes(snippet)) == 1, status_writes(snippet)


@pytest.mark.parametrize(
    "snippet",
    [
        "DeadLetter.objects.filter(id=pk, status='open').update(status='retried', resolved_at=now)",
        "entries = DeadLetter.objects.filter(status='open')\nentries.update(status='discarded')",
        "AIJob.objects.filter(status=JobStatus.RUNNING).values_list('id', flat=True)",
        "AIJob.objects.filter(id=job.id, status__in=WAITING).update(rq_job_id=new_id, deliveries=n)",
        "by_status.update({status: n for status, n in rows})",
        "class ProviderError(Exception):\n    def __init__(self, status):\n        self.status = status",
        "cursor.execute('SELECT status FROM jobs_aijob')",
        "Response(data, status=201)",
    ],
)
def test_the_scan_leaves_other_code_alone(snippet):
    assert status_writes(snippet) == []


def test_the_rule_fails_when_a_module_writes_the_status(tmp_path):
    """A copy of the tree with one forbidden write added to jobs/actions.py: a cancel that skips the state machine."""
    for path in app_modules():
        copy = tmp_path / path.relative_to(ROOT)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(path.read_text())
    actions_copy = tmp_path / "jobs" / "actions.py"
    source = actions_copy.read_text()
    actions_copy.write_text(
        source + "\n\ndef job_cancel_quickly(*, job_id):\n"
        "    AIJob.objects.filter(id=job_id).update(status=JobStatus.CANCELED)\n"
    )

    [write] = writes_outside_transitions(tmp_path)

    assert (write.path, write.function) == ("jobs/actions.py", "job_cancel_quickly")
    assert write.line == len(source.splitlines()) + 4
