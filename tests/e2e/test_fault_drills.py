"""Fault drills: real gunicorn, two forking RQ workers with RQ's scheduler and `reconcile --every 2`
against a private Postgres and Redis (tests/e2e/harness.py), a few hundred jobs on the simulated
provider with a mix of latencies and injected faults, and one kind of damage per drill while they run.

After each drill every job must be final, one more `reconcile` must find nothing left to do, and
``check_books()`` (tests/e2e/books.py) must balance: one final state per job, no second success
or result, valid pages, usage rows == attempts that returned usage, open dead letters == dead jobs,
and the /metrics counters == the rows (short by at most one attempt per process the drill SIGKILLed).
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from django.utils import timezone

from jobs.models import AIJob, AttemptOutcome, JobAttempt, JobStatus
from tests.e2e import harness
from tests.e2e.books import Books, check_books, metric_sum
from tests.e2e.harness import ALIAS, JobSpec, Stack, db_retry, job_mix

pytestmark = pytest.mark.e2e

RECONCILE_LINE = re.compile(r"put back (\d+) lost from Redis, (\d+) from dead workers")


def start(stack: Stack, **env: str) -> list:
    """gunicorn, two workers — [0] the forking AIPBWorker, [1] AIPBSimpleWorker — and `reconcile --every 2`."""
    stack.gunicorn(**env)
    procs = stack.workers(**env)
    stack.reconciler(every=2)
    return procs


def submit_in_background(stack: Stack, specs: list[JobSpec], **kwargs):
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(stack.submit, specs, **kwargs)
    pool.shutdown(wait=False)
    return future


def finish(stack: Stack, specs: list[JobSpec], *, timeout: float, started: float) -> Books:
    """Wait for every job, reconcile once more (it must find nothing), then check the books."""
    stack.wait_final(timeout=timeout)
    leftover = stack.reconcile()
    assert leftover == {"requeued": [], "recovered": [], "dead": [], "dry_run": False}, leftover
    books = check_books(
        using=ALIAS,
        metrics_text=stack.scrape(),
        metrics_slack=stack.kills,
        expected={spec.key: spec.expect for spec in specs},
    )
    assert books.jobs == len(specs)
    print(f"\n[{stack.name}] {time.monotonic() - started:.0f}s: {books.summary()}")
    return books


def slow_job_running(stack: Stack, worker, *, margin: float = 0.4) -> str | None:
    """The id of the job `worker` runs if it is surely inside its (simulated) provider call for at least
    `margin` seconds more: claimed (running), and claimed less than its latency minus `margin` ago."""
    job_id = stack.running_job(worker)
    if job_id is None:
        return None
    job = db_retry(lambda: AIJob.objects.using(ALIAS).filter(id=job_id, status=JobStatus.RUNNING).first())
    if job is None or job.started_at is None:
        return None
    latency = job.options.get("simulate", {}).get("latency_ms", 0) / 1000
    if (timezone.now() - job.started_at).total_seconds() > latency - margin:
        return None
    return job_id


def abandoned(job_ids) -> set[str]:
    rows = JobAttempt.objects.using(ALIAS).filter(job_id__in=list(job_ids), outcome=AttemptOutcome.ABANDONED)
    return {str(job_id) for job_id in rows.values_list("job_id", flat=True)}


def test_work_horse_killed_mid_job(stack: Stack):
    """SIGKILL the forking worker's work-horse (not the worker) while it waits on a slow provider call, six times.

    The worker notices its horse died and takes the next job; the killed attempt stays `running` in
    Postgres until its lease (5 s) runs out, then reconcile records it as abandoned and queues the job
    for another attempt. Nothing is lost, nothing succeeds twice.
    """
    started = time.monotonic()
    workers = start(stack)
    specs = job_mix(150, prefix="horse", seed=1)
    submitting = submit_in_background(stack, specs)

    killed: list[str] = []
    deadline = time.monotonic() + 60
    while len(killed) < 6 and time.monotonic() < deadline:
        for worker in workers:
            horse = stack.horse(worker)
            job_id = slow_job_running(stack, worker)
            if horse and job_id and job_id not in killed and stack.horse(worker) == horse:
                stack.sigkill(horse)
                killed.append(job_id)
        time.sleep(0.2)
    submitting.result()
    assert len(killed) >= 3, f"only {len(killed)} horses caught mid-call"

    books = finish(stack, specs, timeout=120, started=started)
    assert all(worker.alive() for worker in workers), stack.logs("worker")
    assert abandoned(killed) == set(killed)  # each killed attempt is on record as abandoned
    assert books.touched >= len(killed)


def test_worker_process_killed(stack: Stack):
    """SIGKILL a whole worker — main process, work-horse and RQ scheduler — mid-call and start a replacement;
    both workers, the forking one and the simple one, so the worker holding RQ's scheduler lock dies too
    (its lock outlives it by a minute, and until another worker takes it over, delayed retries wait in
    RQ's scheduled registry: reconcile moves the overdue ones). And a delivery popped by a worker that
    died before registering it."""
    started = time.monotonic()
    workers = start(stack)
    specs = job_mix(150, prefix="worker", seed=2)
    submitting = submit_in_background(stack, specs)

    # The one moment a SIGKILL can hit that RQ never recovers from by itself: a worker that has just popped
    # a delivery (BLPOP) and dies before registering it leaves it "queued" in no queue. Pop one by hand.
    conn = stack.servers.redis.client()
    popped = harness.wait_for(lambda: conn.lpop("rq:queue:ai-low"), timeout=30, what="a queued delivery")
    popped_job = popped.decode().split("_", 1)[0]

    killed: list[str] = []
    for victim_index in (0, 1):
        victim = workers[victim_index]
        job_id = None
        deadline = time.monotonic() + 40
        while job_id is None and time.monotonic() < deadline:
            job_id = slow_job_running(stack, victim)
            if job_id is None:
                time.sleep(0.1)
        assert job_id, f"worker {victim.pid} never ran a slow job\n{stack.logs('worker')}"
        stack.kill_worker(victim)
        killed.append(job_id)
        workers[victim_index] = stack.worker((harness.FORKING, harness.SIMPLE)[victim_index])
        time.sleep(2)
    submitting.result()

    books = finish(stack, specs, timeout=150, started=started)
    assert abandoned(killed) == set(killed)
    assert books.touched >= len(killed)
    assert f"requeued  {popped_job}" in stack.logs("reconcile", chars=100_000)


def reconciled(stack: Stack) -> dict[str, int]:
    """What the `reconcile --every` process reported doing so far (it prints only when it acted)."""
    totals = {"lost from Redis": 0, "from dead workers": 0}
    for proc in stack.procs:
        if proc.name == "reconcile":
            for match in RECONCILE_LINE.finditer(proc.log.read_text(errors="replace")):
                totals["lost from Redis"] += int(match.group(1))
                totals["from dead workers"] += int(match.group(2))
    return totals


def wait_succeeded(stack: Stack, n: int, *, timeout: float = 60) -> None:
    harness.wait_for(
        lambda: stack.status_counts().get(JobStatus.SUCCEEDED, 0) >= n, timeout=timeout, what=f"{n} jobs to succeed"
    )


def assert_listed_again(stack: Stack, workers) -> None:
    """Redis forgot the workers; each listed itself again, so `ai_workers` counts them and NoAIWorkers stays quiet."""
    assert {worker.pid for worker in workers} <= stack.registered_workers(), stack.logs("worker")
    assert metric_sum(stack.scrape(), "ai_workers") == len(workers)


def test_redis_flushed_mid_run(stack: Stack):
    """FLUSHALL while jobs wait, run and sit in RQ's scheduled registry (retries): every queue, registry,
    worker registration and scheduler lock is gone. Postgres still has every job; reconcile finds the
    waiting rows whose deliveries vanished (once they are older than its 30 s grace) and queues them again;
    the workers, forgotten too, list themselves again.
    """
    started = time.monotonic()
    workers = start(stack)
    specs = job_mix(150, prefix="flush", seed=3)
    submitting = submit_in_background(stack, specs)
    wait_succeeded(stack, 25)
    stack.servers.redis.flushall()
    submitting.result()

    finish(stack, specs, timeout=150, started=started)
    assert reconciled(stack)["lost from Redis"] > 0
    assert all(worker.alive() for worker in workers), stack.logs("worker")
    assert_listed_again(stack, workers)


def test_redis_restarted_empty(stack: Stack):
    """Redis stops (no persistence) for 3 s and comes back empty while jobs run. Submissions during the
    outage still succeed (the row commits; its enqueue fails and is left to reconcile)."""
    started = time.monotonic()
    workers = start(stack)
    specs = job_mix(150, prefix="restart", seed=4)
    submitting = submit_in_background(stack, specs)
    wait_succeeded(stack, 25)
    stack.servers.redis.restart(down_seconds=3)
    report = submitting.result()
    assert report.server_errors == 0, report.statuses

    finish(stack, specs, timeout=150, started=started)
    assert reconciled(stack)["lost from Redis"] > 0
    assert all(worker.alive() for worker in workers), stack.logs("worker")
    assert_listed_again(stack, workers)


def test_postgres_restarted_mid_run(stack: Stack):
    """Postgres stops (`pg_ctl stop -m fast`: every session is cut) for 3 s and starts again while jobs run
    and clients submit. Requests during the outage may fail with a 5xx — the clients send them again with
    the same Idempotency-Key — but afterwards gunicorn and the workers carry on without a restart,
    and nothing is lost or doubled."""
    started = time.monotonic()
    start(stack)
    specs = job_mix(160, prefix="pg", seed=5)
    first, second = specs[:100], specs[100:]
    stack.submit(first)
    wait_succeeded(stack, 20)
    stack.servers.pg.stop()  # fast: every session is cut, running attempts included
    submitting = submit_in_background(stack, second, clients=2, retry_for=60)
    time.sleep(3)
    stack.servers.pg.resume()
    harness.reset_connection()
    report = submitting.result()

    assert report.server_errors > 0, report.statuses  # the clients did see the outage ...
    assert len(set(report.ids)) == len(second)  # ... and got one job per Idempotency-Key, however often sent
    finish(stack, specs, timeout=150, started=started)
    assert all(proc.alive() for proc in stack.procs), stack.logs()
    print(f"[{stack.name}] HTTP answers while Postgres restarted: {dict(report.statuses)}")


def openai_job(key: str, *, max_attempts: int) -> JobSpec:
    body = {
        "prompt": f"A landing page for drill job {key}",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "max_attempts": max_attempts,
    }
    return JobSpec(key=key, body=body, expect="succeeded")


OUTAGE_SECONDS = 60  # the minute
TRICKLE_UNTIL_SECONDS = 35  # 3-attempt jobs keep arriving this long into the outage
LATE_SECONDS = 5  # 10-attempt jobs arrive this long before it ends


def test_provider_times_out_then_recovers(stack: Stack):
    """The provider stops answering for a minute, then recovers: the fake OpenAI server
    (tests/fakes/openai_server.py, run as its own process) is switched to hang on every request, our
    client gives up after AI_PROVIDER_TIMEOUT_SECONDS (1 s) and the attempt is retried with backoff
    (0.2-1 s).

    Which jobs die is decided by when they arrive, not by a race: every attempt costs at least the 1 s
    timeout. Jobs with a 3-attempt budget arrive through the first 35 s of the outage and all die into
    the DLQ as TIMEOUT while it lasts (the drill waits for that); jobs with a 10-attempt budget arrive
    5 s before it ends, have room for at most ~5 timed-out attempts, and ride it out. Mid-outage the
    operator's view is checked: the DLQ API lists each dead job as TIMEOUT, and the error counter on
    /metrics equals the timed-out attempts. After recovery new jobs succeed, an operator bulk-retries
    the dead letters over the API, and every job ends succeeded.
    """
    from tests.fakes.base import DEFAULT_API_KEY

    started = time.monotonic()
    port = harness.free_port()
    argv = [harness.PYTHON, "-m", "tests.fakes.openai_server", "--port", str(port), "--hang-seconds", "3"]
    fake = stack.start("fake-openai", argv)
    fake_api = harness.ApiClient(port)
    harness.wait_for(lambda: _ok(fake_api, "GET", "/__fake__/health"), timeout=30, what=harness.tail(fake.log))
    stack.env.update(
        OPENAI_API_KEY=DEFAULT_API_KEY, OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1", AI_PROVIDER_TIMEOUT_SECONDS="1"
    )
    start(stack)
    before = [openai_job(f"before-{i}", max_attempts=3) for i in range(80)]
    stack.submit(before)
    stack.wait_final(timeout=60, what="the jobs before the outage")

    assert _ok(fake_api, "POST", "/__fake__/scenarios", ["timeout"] * 5000)  # every request hangs from now on
    outage_started = time.monotonic()

    def into_outage(seconds: float) -> None:
        time.sleep(max(0.0, outage_started + seconds - time.monotonic()))

    doomed: list[JobSpec] = []
    for second in range(0, TRICKLE_UNTIL_SECONDS + 1, 5):
        into_outage(second)
        batch = [openai_job(f"doomed-{second}-{i}", max_attempts=3) for i in range(2)]
        stack.submit(batch)
        doomed += batch
    doomed_keys = {spec.key for spec in doomed}
    harness.wait_for(
        lambda: set(_jobs(doomed_keys, status=JobStatus.DEAD)) == doomed_keys,
        timeout=OUTAGE_SECONDS - LATE_SECONDS - TRICKLE_UNTIL_SECONDS - 1,
        what="the 3-attempt jobs to die while the provider is down",
    )
    open_letters = _dead_letters(stack, error_type="TIMEOUT")
    assert open_letters == {str(job.id) for job in _jobs(doomed_keys).values()}, open_letters
    timeouts_so_far = JobAttempt.objects.using(ALIAS).filter(error_type="TIMEOUT").count()
    assert timeouts_so_far == 3 * len(doomed)
    harness.wait_for(  # a worker counts an attempt just after committing it
        lambda: metric_sum(stack.scrape(), "ai_jobs_errors_total", error_type="TIMEOUT") == timeouts_so_far,
        timeout=10,
        what=f"ai_jobs_errors_total{{error_type=TIMEOUT}} to reach {timeouts_so_far}",
    )

    into_outage(OUTAGE_SECONDS - LATE_SECONDS)
    late = [openai_job(f"late-{i}", max_attempts=10) for i in range(4)]
    stack.submit(late)
    late_keys = {spec.key for spec in late}
    harness.wait_for(
        lambda: set(_timeouts(late_keys)) == late_keys, timeout=30, what="every late job to time out at least once"
    )
    into_outage(OUTAGE_SECONDS)
    assert _ok(fake_api, "POST", "/__fake__/reset")  # and is answered again
    outage = time.monotonic() - outage_started

    after = [openai_job(f"after-{i}", max_attempts=3) for i in range(60)]
    stack.submit(after)
    stack.wait_final(timeout=90)

    jobs = _jobs({spec.key for spec in before + doomed + late + after})
    dead = {key for key, job in jobs.items() if job.status == JobStatus.DEAD}
    assert dead == doomed_keys, sorted(dead ^ doomed_keys)
    assert all(jobs[key].error_type == "TIMEOUT" and jobs[key].attempts == 3 for key in dead)
    assert all(job.status == JobStatus.SUCCEEDED for key, job in jobs.items() if key not in dead)
    late_timeouts = _timeouts(late_keys)
    assert all(jobs[key].attempts == late_timeouts[key] + 1 for key in late_keys), late_timeouts
    assert set(_timeouts(set(jobs))) == doomed_keys | late_keys  # the outage hit exactly the jobs sent into it

    status, body = stack.client(staff=True).request("POST", "/api/ai/dlq/retry", {})
    assert status == 202 and body["retried"] == len(dead), (status, body)
    specs = before + doomed + late + after
    books = finish(stack, specs, timeout=60, started=started)
    assert books.statuses == {JobStatus.SUCCEEDED: len(specs)}
    assert books.dead_letters == {"retried": len(dead)}
    timeouts = JobAttempt.objects.using(ALIAS).filter(error_type="TIMEOUT").count()
    assert metric_sum(stack.scrape(), "ai_jobs_errors_total", error_type="TIMEOUT") == timeouts
    print(
        f"[{stack.name}] a {outage:.0f}s outage: {len(dead)} jobs died and were retried from the DLQ; "
        f"the late jobs rode it out with {dict(sorted(late_timeouts.items()))} timeouts"
    )


def routed_job(key: str, *, fallbacks: list[dict], max_attempts: int) -> JobSpec:
    body = {
        "prompt": f"A landing page for drill job {key}",
        "provider": "simulated",
        "model": "sim-small",
        "fallbacks": fallbacks,
        "max_attempts": max_attempts,
    }
    return JobSpec(key=key, body=body, expect="succeeded")


def test_provider_outage_with_fallbacks(stack: Stack):
    """The provider drill with routing on: sim-small goes down for a minute (`manage.py providers outage`, the
    simulated provider's switch shared by every worker) with circuits on (3 failures open one for 10 s).

    Jobs with a fallback to sim-large all succeed while the outage lasts; jobs without one wait for the circuit
    instead of spending their budget and all succeed after it; sim-small sees a bounded number of calls during
    the outage (the failures that open its circuit, then one probe per cool-down), not one per job; the books
    name the target of every attempt and bill it there; the fallback counter equals the attempts that fell back.
    """
    started = time.monotonic()
    stack.env.update(AI_CIRCUIT_FAILURE_THRESHOLD="3", AI_CIRCUIT_COOLDOWN_SECONDS="10")
    start(stack)
    stack.servers.manage(
        ["providers", "outage", "simulated", "sim-small", "--seconds", str(OUTAGE_SECONDS)], env=stack.env
    )
    outage_started = time.monotonic()
    large = [{"provider": "simulated", "model": "sim-large"}]
    covered = [routed_job(f"covered-{i}", fallbacks=large, max_attempts=3) for i in range(60)]
    waiting = [routed_job(f"waiting-{i}", fallbacks=[], max_attempts=5) for i in range(20)]
    stack.submit(covered + waiting)
    covered_keys, waiting_keys = {s.key for s in covered}, {s.key for s in waiting}

    harness.wait_for(
        lambda: set(_jobs(covered_keys, status=JobStatus.SUCCEEDED)) == covered_keys,
        timeout=OUTAGE_SECONDS - 10,
        what="every job with a fallback to succeed during the outage",
    )
    assert not _jobs(waiting_keys, status=JobStatus.SUCCEEDED) and not _jobs(waiting_keys, status=JobStatus.DEAD)
    during = JobAttempt.objects.using(ALIAS).filter(model="sim-small").count()
    probes_possible = OUTAGE_SECONDS // 10 + 1
    assert 3 <= during <= 3 + 2 + probes_possible, f"{during} calls reached sim-small while it was down"

    time.sleep(max(0.0, outage_started + OUTAGE_SECONDS - time.monotonic()))  # the switch expires by itself
    books = finish(stack, covered + waiting, timeout=120, started=started)

    assert books.statuses == {JobStatus.SUCCEEDED: len(covered) + len(waiting)}
    jobs = _jobs(covered_keys | waiting_keys)
    assert all(jobs[key].served_model == "sim-large" for key in covered_keys)
    assert all(jobs[key].served_model == "sim-small" and jobs[key].attempts <= 5 for key in waiting_keys)
    fell_back = JobAttempt.objects.using(ALIAS).filter(model="sim-large").count()
    assert metric_sum(stack.scrape(), "ai_jobs_fallback_total", from_provider="simulated") == fell_back
    failed_small = JobAttempt.objects.using(ALIAS).filter(model="sim-small", outcome="failed").count()
    waited = sorted(job.attempts for key, job in jobs.items() if key in waiting_keys)
    print(
        f"[{stack.name}] a {OUTAGE_SECONDS}s outage of sim-small: {fell_back} attempts fell back to sim-large, "
        f"{failed_small} calls failed on sim-small, the waiting jobs took {waited} attempts"
    )


def _jobs(keys: set[str], **filters) -> dict[str, AIJob]:
    rows = AIJob.objects.using(ALIAS).filter(idempotency_key__in=list(keys), **filters)
    return {job.idempotency_key: job for job in rows}


def _timeouts(keys: set[str]) -> Counter:
    """Timed-out attempts per Idempotency-Key."""
    rows = JobAttempt.objects.using(ALIAS).filter(job__idempotency_key__in=list(keys), error_type="TIMEOUT")
    return Counter(rows.values_list("job__idempotency_key", flat=True))


def _dead_letters(stack: Stack, **filters: str) -> set[str]:
    """Job ids of the open dead letters, as an operator lists them over the API."""
    query = "&".join(f"{k}={v}" for k, v in {"status": "open", "limit": "100", **filters}.items())
    status, body = stack.client(staff=True).request("GET", f"/api/ai/dlq?{query}")
    assert status == 200, body
    assert body["count"] == len(body["results"]), body["count"]
    return {entry["job_id"] for entry in body["results"]}


def _ok(client: harness.ApiClient, method: str, path: str, body=None) -> bool:
    try:
        return client.request(method, path, body)[0] == 200
    except OSError:
        return False


def test_worker_sigterm_finishes_its_job(stack: Stack):
    """SIGTERM to a worker process (what `kill`, docker stop and Kubernetes send) while it runs a job: RQ's
    warm shutdown finishes the job — in the process itself (AIPBSimpleWorker) or in its work-horse
    (AIPBWorker) — and the worker exits 0; no attempt is lost. Then SIGTERM to every process of a
    forking worker, horse included (systemd's default KillMode=control-group): the horse dies mid-call
    and its job is handed back — lease expiry, reconcile, another attempt. Nothing is lost either way."""
    started = time.monotonic()
    workers = start(stack)
    specs = job_mix(120, prefix="term", seed=6, slow_ms=(1500, 2500))
    submitting = submit_in_background(stack, specs)

    def busy(worker) -> str:
        return harness.wait_for(lambda: slow_job_running(stack, worker), timeout=40, what="a slow job")

    finished = []
    for index, worker_class in ((1, harness.SIMPLE), (0, harness.FORKING)):
        job_id = busy(workers[index])
        workers[index].popen.send_signal(signal.SIGTERM)
        assert workers[index].popen.wait(timeout=15) == 0, stack.logs("worker")
        job = AIJob.objects.using(ALIAS).get(id=job_id)
        assert job.status == JobStatus.SUCCEEDED, (worker_class, job.status, job.error_message)
        assert not abandoned([job_id]), worker_class  # finished by the worker that was told to stop
        finished.append(job_id)
        workers[index] = stack.worker(worker_class)

    handed_back = busy(workers[0])
    family = [workers[0].pid, *(c.pid for c in psutil.Process(workers[0].pid).children(recursive=True))]
    for pid in family:
        os.kill(pid, signal.SIGTERM)
    workers[0].popen.wait(timeout=15)
    workers[0] = stack.worker(harness.FORKING)
    submitting.result()

    books = finish(stack, specs, timeout=120, started=started)
    assert abandoned([handed_back]) == {handed_back}
    assert books.touched >= 1
