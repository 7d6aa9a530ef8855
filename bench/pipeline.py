"""Benchmark 1: pipeline throughput against bare RQ, per worker class.

For each worker setup, two runs on the same Redis with the same worker processes and command:

- ours: N jobs on the simulated provider with zero latency, submitted with ``jobs.submission.job_submit``
  (one transaction and one enqueue each, as the API does), then drained by real worker processes
  (``manage.py rqworker --burst`` x W, or ``manage.py rqworker-pool --num-workers W --burst``) on real
  Postgres and Redis, to their final state;
- bare RQ: N no-op jobs (bench.noop.noop) enqueued with the same options, drained by the same command.

The drain rate is N / (last job finished - first job started), read from the rows (ours) and from RQ's
job hashes (bare), so worker start-up (Django import) counts for neither. The rate limiter is off.
The submit rate (one process calling job_submit) and the wall time, start-up included, are shown too.

    python -m bench.pipeline [--quick] [--jobs N] [--workers W] [--case fork|pool|simple|pool-simple ...]

``--tracing``: instead, the cost of tracing: the same jobs drained with tracing off, with it on (every span
exported over OTLP/HTTP to a loopback receiver in this process), and on with a span per SQL statement too
(AIPB_TRACE_SQL=1), in rotated order, ``--rounds`` times; worker CPU per job, start-up subtracted for each mode
(the SDK's import is a start-up cost), medians.

    python -m bench.pipeline --tracing [--case threaded] [--jobs N] [--rounds R]

``--profile N``: instead, where one attempt's CPU goes: N zero-latency jobs (and N bare RQ no-ops) run by one
worker of the case's class (simple or threaded) in this process, after a warm-up; CPU ms per job (process time,
unprofiled), multiprocess-metric value writes per job, and cProfile's top entries by cumulative and own time, all
and ours only (our modules, not RQ's dequeue and bookkeeping that bare RQ pays too); the .prof files go to
``--profile-out`` (default $BENCH_TMP/aipb-bench/profile).

    python -m bench.pipeline --profile 300 [--case threaded|simple] [--profile-out DIR]

``--steps N``: instead, an attempt's CPU step by step without a profiler (cProfile inflates call-heavy code: it put
the page's validation at 1.25 ms a job, which takes 0.14): N zero-latency jobs run by ``jobs.pipeline.run_attempt``
in one thread of this process after a warm-up, each step timed with ``time.thread_time`` around it (the claim,
routing, the budget check, the provider, validation, the usage row, the circuit's report, the end, the metrics), in
ms per job, with and without the psycopg pool the threaded worker uses (the connection given back for the call is
taken again for the usage row).

    python -m bench.pipeline --steps 1000
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

from bench import common

TARGET_RATE = 400.0
TARGET_FRACTION = 0.5
TARGET_TRACING_OVERHEAD = 0.15  # worker CPU per job, tracing on vs off
TRACING_MODES = ("off", "on", "on-sql")
QUEUES = ["ai-high", "ai-default", "ai-low"]
SUBMIT_BATCH = 500


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    worker_class: str
    pool: bool


CASES = {
    "fork": Case("fork", "forking AIPBWorker x W (rqworker)", "jobs.worker.AIPBWorker", False),
    "pool": Case("pool", "worker pool of forking AIPBWorker (rqworker-pool)", "jobs.worker.AIPBWorker", True),
    "simple": Case("simple", "AIPBSimpleWorker x W (rqworker)", "jobs.worker.AIPBSimpleWorker", False),
    "pool-simple": Case(
        "pool-simple", "worker pool of AIPBSimpleWorker (rqworker-pool)", "jobs.worker.AIPBSimpleWorker", True
    ),
    # the default: W processes of THREADS threads each, with Django's connection pool
    "threaded": Case(
        "threaded",
        "AIPBThreadedWorker x W (rqworker, 8 threads each)",
        "jobs.threaded_worker.AIPBThreadedWorker",
        False,
    ),
}
THREADS = 8


@dataclass
class Run:
    jobs: int
    drain_s: float
    wall_s: float
    submit_s: float
    ok: int
    cpu_s: float  # user + system CPU of the worker processes (work-horses included), start-up included

    @property
    def rate(self) -> float:
        return self.jobs / self.drain_s if self.drain_s > 0 else 0.0

    @property
    def cpu_ms_per_job(self) -> float:
        return self.cpu_s * 1000 / self.jobs


def _worker_commands(case: Case, workers: int) -> list[list[str]]:
    if case.pool:
        return [
            [common.PY, "manage.py", "rqworker-pool", *QUEUES, "--num-workers", str(workers), "--burst"]
            + ["--worker-class", case.worker_class, "-v", "0"]
        ]
    return [
        [common.PY, "manage.py", "rqworker", *QUEUES, "--burst", "--worker-class", case.worker_class, "-v", "0"]
        for _ in range(workers)
    ]


def _drain(case: Case, workers: int, *, timeout: float, log, env_extra: dict | None = None) -> tuple[float, float]:
    """Run the workers until the queues are empty: (wall seconds, CPU seconds of every worker process)."""
    metrics_dir = common.scratch_dir("metrics")
    for f in metrics_dir.glob("*.db"):
        f.unlink()
    env = common.worker_env(AI_RATE_LIMIT_PER_SECOND="0", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}  # tracing only where a run asks for it
    env.update(env_extra or {})
    if case.key == "threaded":
        env.update(AI_WORKER_THREADS=str(THREADS), DATABASE_POOL_MAX_SIZE=str(THREADS // 2))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    procs = [common.spawn(cmd, env=env, log=log) for cmd in _worker_commands(case, workers)]
    common.wait_all(procs, timeout=timeout)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_ours(case: Case, *, jobs: int, workers: int, log, env_extra: dict | None = None) -> Run:
    from django.db import transaction
    from django.db.models import Max, Min

    from jobs.models import AIJob, JobStatus

    common.reset_state()
    owner = common.bench_user()
    t = time.perf_counter()
    for start in range(0, jobs, SUBMIT_BATCH):
        with transaction.atomic():  # in bulk: one commit (and one burst of enqueues) per batch
            common.submit_simulated(owner=owner, indexes=range(start, min(jobs, start + SUBMIT_BATCH)))
    submit_s = time.perf_counter() - t
    wall_s, cpu_s = _drain(case, workers, timeout=max(300.0, jobs / 5), log=log, env_extra=env_extra)
    span = AIJob.objects.aggregate(first=Min("started_at"), last=Max("finished_at"))
    ok = AIJob.objects.filter(status=JobStatus.SUCCEEDED).count()
    drain_s = (span["last"] - span["first"]).total_seconds() if span["first"] and span["last"] else wall_s
    return Run(jobs=jobs, drain_s=drain_s, wall_s=wall_s, submit_s=submit_s, ok=ok, cpu_s=cpu_s)


def run_bare(case: Case, *, jobs: int, workers: int, log) -> Run:
    from rq import Queue
    from rq.job import Job

    from aipb.redis_client import get_redis

    common.reset_state()
    conn = get_redis()
    queue = Queue("ai-default", connection=conn)
    kwargs = {"timeout": 210, "result_ttl": 600, "failure_ttl": 86_400}
    t = time.perf_counter()
    ids = []
    batch = 500
    for start in range(0, jobs, batch):
        specs = [
            Queue.prepare_data("bench.noop.noop", args=(str(i), str(i)), description=f"noop {i}", **kwargs)
            for i in range(start, min(jobs, start + batch))
        ]
        ids += [job.id for job in queue.enqueue_many(specs)]
    submit_s = time.perf_counter() - t
    wall_s, cpu_s = _drain(case, workers, timeout=max(300.0, jobs / 5), log=log)
    first = last = None
    ok = 0
    for start in range(0, len(ids), 1000):
        for job in Job.fetch_many(ids[start : start + 1000], connection=conn):
            if job is None or job.started_at is None or job.ended_at is None:
                continue
            ok += job.get_status(refresh=False) == "finished"
            first = job.started_at if first is None or job.started_at < first else first
            last = job.ended_at if last is None or job.ended_at > last else last
    drain_s = (last - first).total_seconds() if first and last else wall_s
    return Run(jobs=jobs, drain_s=drain_s, wall_s=wall_s, submit_s=submit_s, ok=ok, cpu_s=cpu_s)


def startup_cpu(case: Case, workers: int, *, log, env_extra: dict | None = None) -> float:
    """CPU seconds the worker processes spend starting and stopping with nothing to do (subtracted per job)."""
    common.reset_state()
    return _drain(case, workers, timeout=120.0, log=log, env_extra=env_extra)[1]


def tracing_overhead(case: Case, *, jobs: int, workers: int, rounds: int, log) -> dict:
    """Worker CPU per job with tracing off, on (exporting to a loopback OTLP/HTTP receiver), and on with a span per
    SQL statement too (AIPB_TRACE_SQL=1), in an order rotated each round."""
    from tests.fakes.otlp_server import OTLPReceiver

    cpu: dict[str, list[float]] = {mode: [] for mode in TRACING_MODES}
    exported = []
    with OTLPReceiver() as otlp:
        on = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_SERVICE_NAME": "aipb-bench"}
        modes = {"off": {}, "on": on, "on-sql": {**on, "AIPB_TRACE_SQL": "1"}}
        for n in range(rounds):
            for mode in TRACING_MODES[n % 3 :] + TRACING_MODES[: n % 3]:
                idle = startup_cpu(case, workers, log=log, env_extra=modes[mode])
                before = len(otlp.named("aipb.attempt"))
                run = run_ours(case, jobs=jobs, workers=workers, log=log, env_extra=modes[mode])
                assert run.ok == jobs, f"{mode}: {run.ok}/{jobs} succeeded"
                cpu[mode].append((run.cpu_s - idle) * 1000 / jobs)
                if mode == "on":
                    exported.append(len(otlp.named("aipb.attempt")) - before)
        spans = len(otlp.snapshot())
    return {"cpu_ms": cpu, "attempt_spans": exported, "spans": spans, "requests": otlp.requests}


class _Counter:
    """Counts, in this process, SQL statements and Redis round trips / commands, and Postgres commits."""

    def __init__(self) -> None:
        self.sql = 0
        self.redis_round_trips = 0
        self.redis_commands = 0
        self._patched: list = []

    def _sql(self, execute, sql, params, many, context):
        self.sql += 1
        return execute(sql, params, many, context)

    def __enter__(self):
        from django.db import connection
        from redis.connection import AbstractConnection

        counter = self

        def send_packed_command(conn, command, check_health=True):
            counter.redis_round_trips += 1
            return originals["send_packed_command"](conn, command, check_health)

        # A command sent alone is packed inside send_command, without pack_command (redis-py 8): count it
        # there. A pipeline's commands go through pack_commands; a caller packing its own, pack_command.
        def send_command(conn, *args, **kwargs):
            counter.redis_commands += 1
            return originals["send_command"](conn, *args, **kwargs)

        def pack_command(conn, *args):
            counter.redis_commands += 1
            return originals["pack_command"](conn, *args)

        def pack_commands(conn, commands):
            counter.redis_commands += len(commands)
            return originals["pack_commands"](conn, commands)

        patches = {f.__name__: f for f in (send_packed_command, send_command, pack_command, pack_commands)}
        originals = {name: getattr(AbstractConnection, name) for name in patches}
        self._patched = list(originals.items())
        for name, patch in patches.items():
            setattr(AbstractConnection, name, patch)
        self.commits_before = _commits()
        self._wrapper = connection.execute_wrapper(self._sql)
        self._wrapper.__enter__()
        return self

    def __exit__(self, *exc):
        from redis.connection import AbstractConnection

        self._wrapper.__exit__(*exc)
        for name, original in self._patched:
            setattr(AbstractConnection, name, original)
        self.commits = _commits() - self.commits_before


def _commits() -> int:
    """Transactions committed in the benchmark database so far (pg_stat_database; our session's are flushed first)."""
    from django.db import connection

    connection.close()  # a backend reports its pending statistics when it exits
    time.sleep(0.3)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        value = cursor.fetchone()[0]
    connection.close()
    time.sleep(0.3)
    return value


def round_trips(*, jobs: int) -> dict:
    """Per job, in one AIPBSimpleWorker in this process: what ours and a bare no-op cost in round trips.

    These counts do not depend on how busy the machine is, unlike the rates.
    """
    from django.conf import settings
    from rq import Queue

    from aipb.redis_client import get_redis
    from jobs.queues import all_queues
    from jobs.worker import AIPBSimpleWorker

    settings.AI_RATE_LIMIT_PER_SECOND = 0
    out = {}
    owner = common.bench_user()
    for kind in ("bare", "ours"):
        common.reset_state()
        if kind == "ours":
            with _Counter() as submit:
                common.submit_simulated(owner=owner, indexes=range(jobs))
            out["submit"] = submit
        else:
            queue = Queue("ai-default", connection=get_redis())
            queue.enqueue_many(
                [
                    Queue.prepare_data("bench.noop.noop", args=(str(i), str(i)), timeout=210, result_ttl=600)
                    for i in range(jobs)
                ]
            )
        worker = AIPBSimpleWorker(all_queues(), connection=get_redis())
        with _Counter() as work:
            worker.work(burst=True, logging_level="WARNING")
        out[kind] = work
    return {
        key: {
            "sql": c.sql / jobs,
            "commits": c.commits / jobs,
            "redis_round_trips": c.redis_round_trips / jobs,
            "redis_commands": c.redis_commands / jobs,
        }
        for key, c in out.items()
    }


# --- --profile: where one attempt's CPU goes, in this process ---

# Our code, as opposed to RQ's, redis-py's, Django's and the standard library's: the profile lists these apart.
OUR_PACKAGES = ("aipb", "jobs", "usage", "monitoring", "dlq", "webhooks", "schedules")


class _MetricWrites:
    """Counts the multiprocess-metric value writes (an mmap write each) made in this process."""

    def __enter__(self):
        from prometheus_client.mmap_dict import MmapedDict

        self.writes = 0
        self._original = MmapedDict.write_value
        counter = self

        def write_value(mmaped, key, value, timestamp):
            counter.writes += 1
            return counter._original(mmaped, key, value, timestamp)

        MmapedDict.write_value = write_value
        return self

    def __exit__(self, *exc):
        from prometheus_client.mmap_dict import MmapedDict

        MmapedDict.write_value = self._original


def _profile_enqueue(kind: str, jobs: int) -> None:
    from django.db import transaction
    from rq import Queue

    from aipb.redis_client import get_redis

    common.reset_state()
    if kind == "bare":
        Queue("ai-default", connection=get_redis()).enqueue_many(
            [
                Queue.prepare_data("bench.noop.noop", args=(str(i), str(i)), timeout=210, result_ttl=600)
                for i in range(jobs)
            ]
        )
        return
    with transaction.atomic():
        common.submit_simulated(owner=common.bench_user(), indexes=range(jobs))


def _profiled_worker_class(case: Case):
    """The case's worker class; for the threaded worker, one that profiles each attempt in its own thread too
    (cProfile sees only the thread that enabled it)."""
    import importlib
    import threading

    module, name = case.worker_class.rsplit(".", 1)
    base = getattr(importlib.import_module(module), name)
    if case.key != "threaded":
        return base, []

    profiles: list = []
    local = threading.local()

    class Profiled(base):
        def perform_job(self, *args, **kwargs):
            import cProfile

            if getattr(local, "profile", None) is None:
                local.profile = cProfile.Profile(time.thread_time)
                profiles.append(local.profile)
            local.profile.enable()
            try:
                return super().perform_job(*args, **kwargs)
            finally:
                local.profile.disable()

    return Profiled, profiles


def profile_attempts(case: Case, *, jobs: int, out_dir, rounds: int = 3, warmup: int = 30) -> dict:
    """Per job, in one worker of the case's class in this process, ours and bare RQ no-ops: CPU ms (process
    time, all threads; unprofiled runs, bare and ours alternating, `rounds` of each: the machine is shared, so
    the least of each is shown beside the median), then a cProfile run of each (each thread's CPU time; its .prof
    files in out_dir) with the metric-value writes counted. A warm-up run first: imports and once-per-process
    work are not counted."""
    import cProfile
    import pstats

    from django.conf import settings

    from aipb.redis_client import get_redis
    from jobs.queues import all_queues

    settings.AI_RATE_LIMIT_PER_SECOND = 0
    worker_class, thread_profiles = _profiled_worker_class(case)
    kwargs = {"threads": THREADS} if case.key == "threaded" else {}

    def run(kind: str, n: int):
        _profile_enqueue(kind, n)
        worker = worker_class(all_queues(), connection=get_redis(), **kwargs)
        return lambda: worker.work(burst=True, logging_level="WARNING")

    out: dict = {kind: {"cpu_ms": []} for kind in ("bare", "ours")}
    for kind in out:
        run(kind, warmup)()
    for _ in range(rounds):
        for kind in out:
            work = run(kind, jobs)
            cpu = time.process_time()
            work()
            out[kind]["cpu_ms"].append((time.process_time() - cpu) * 1000 / jobs)
    for kind in out:
        work = run(kind, jobs)
        thread_profiles.clear()
        profile = cProfile.Profile(time.thread_time)  # CPU, not wall time: waiting on a socket is not work
        with _MetricWrites() as writes:
            profile.enable()
            work()
            profile.disable()
        stats = pstats.Stats(profile)
        for extra in thread_profiles:
            stats.add(extra)
        path = out_dir / f"{case.key}-{kind}.prof"
        stats.dump_stats(str(path))
        out[kind].update(metric_writes=writes.writes / jobs, stats=stats, path=path)
    return out


# --- --steps: an attempt's CPU step by step, without a profiler ---

# (module, class or None, attribute, label) of each step, as jobs.pipeline calls it: the names it imported, so the
# wrappers are what it runs.
STEPS = (
    ("jobs.admission", None, "attempt_claim", "the claim (with the owner's limits)"),
    ("jobs.routing.chains", None, "route_attempt", "routing (the circuits)"),
    ("jobs.pipeline", None, "budget_enforce", "the budget check"),
    ("jobs.pipeline", None, "_release_connection", "the connection given back for the call"),
    ("jobs.providers.simulated", "SimulatedProvider", "generate", "the provider (simulated: its page)"),
    ("jobs.pipeline", None, "parse_page", "validation"),
    ("jobs.pipeline", None, "usage_record_durable", "the usage row (and the spend)"),
    ("jobs.routing.chains", None, "attempt_report", "the circuit's report"),
    ("jobs.pipeline", None, "_record_through_outage", "the end (state and attempt row)"),
    ("jobs.accounting", None, "attempt_ended", "metrics and the validation window"),
    ("jobs.accounting", None, "usage_counted", "usage metrics"),
    ("jobs.accounting", None, "job_claimed", "claim metrics"),
)


def _timed_steps() -> tuple[dict[str, float], list]:
    """Wrap each step so its thread CPU adds up under its label; returns the totals and what undoes it."""
    import importlib
    from collections import defaultdict

    totals: dict[str, float] = defaultdict(float)
    undo = []
    for module, owner, name, label in STEPS:
        target = importlib.import_module(module)
        if owner is not None:
            target = getattr(target, owner)
        original = getattr(target, name)

        def timed(*args, _original=original, _label=label, **kwargs):
            start = time.thread_time()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_label] += time.thread_time() - start

        setattr(target, name, timed)
        undo.append((target, name, original))
    return totals, undo


def attempt_steps(*, jobs: int, warmup: int = 50) -> dict:
    """CPU ms per job of run_attempt and of each step, N zero-latency jobs in this thread, pool off then on. (The
    threaded worker also gives the connection back after each job, and its next claim takes one again: this loop
    keeps it, so with the pool only the usage row takes a connection from it.)"""
    from django.conf import settings
    from django.db import connections, transaction

    from jobs import pipeline
    from jobs.models import AIJob

    settings.AI_RATE_LIMIT_PER_SECOND = 0
    out = {}
    database = connections["default"].settings_dict
    for pooled in (False, True):
        connections.close_all()
        if pooled:
            database["CONN_MAX_AGE"] = 0
            database["OPTIONS"]["pool"] = {"min_size": 1, "max_size": 4, "timeout": 30}
        common.reset_state()
        with transaction.atomic():
            common.submit_simulated(owner=common.bench_user(), indexes=range(warmup + jobs))
        deliveries = list(AIJob.objects.order_by("created_at").values_list("id", "rq_job_id", "provider"))
        for job_id, rq_job_id, provider in deliveries[:warmup]:
            pipeline.run_attempt(str(job_id), rq_job_id, provider)
        totals, undo = _timed_steps()
        start = time.thread_time()
        outcomes = {pipeline.run_attempt(str(j), r, p) for j, r, p in deliveries[warmup:]}
        total = time.thread_time() - start
        for target, name, original in undo:
            setattr(target, name, original)
        out["pool" if pooled else "no pool"] = {
            "outcomes": outcomes,
            "total_ms": total * 1000 / jobs,
            "steps": {label: totals[label] * 1000 / jobs for *_, label in STEPS},
        }
    connections.close_all()
    return out


def main_steps(args) -> dict:
    common.configure_env()
    metrics_dir = common.scratch_dir("steps-metrics")
    for f in metrics_dir.glob("*.db"):
        f.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # as the workers run: metrics in multiprocess mode
    import django

    django.setup()
    out = attempt_steps(jobs=args.steps)
    print(f"\n== one attempt's CPU by step, {args.steps} zero-latency jobs in one thread (ms per job, no profiler)")
    print(f"{'step':<42} {'no pool':>8} {'pool':>8}")
    for *_, label in STEPS:
        print(f"{label:<42} {out['no pool']['steps'][label]:8.3f} {out['pool']['steps'][label]:8.3f}")
    rest = {key: out[key]["total_ms"] - sum(out[key]["steps"].values()) for key in out}
    print(f"{'the rest of run_attempt':<42} {rest['no pool']:8.3f} {rest['pool']:8.3f}")
    print(f"{'run_attempt in all':<42} {out['no pool']['total_ms']:8.3f} {out['pool']['total_ms']:8.3f}")
    print("outcomes:", sorted(out["no pool"]["outcomes"] | out["pool"]["outcomes"]))
    return out


def _ours(filename: str) -> bool:
    path = os.path.relpath(filename, common.ROOT)
    return not path.startswith("..") and path.split(os.sep, 1)[0] in OUR_PACKAGES


def profile_top(stats, *, jobs: int, top: int, ours_only: bool) -> dict[str, list[tuple[str, float, float, float]]]:
    """The top entries by cumulative and by own time: (function, calls per job, cumulative ms per job, own ms per
    job); ours_only keeps our modules' functions."""
    rows = []
    for (filename, line, name), (_cc, calls, own, cumulative, _callers) in stats.stats.items():
        if ours_only and not _ours(filename):
            continue
        where = os.path.relpath(filename, common.ROOT) if _ours(filename) else filename.rsplit("site-packages/", 1)[-1]
        rows.append((f"{where}:{line}({name})", calls / jobs, cumulative * 1000 / jobs, own * 1000 / jobs))
    return {
        "cumulative": sorted(rows, key=lambda row: row[2], reverse=True)[:top],
        "own": sorted(rows, key=lambda row: row[3], reverse=True)[:top],
    }


def main_profile(args) -> dict:
    from pathlib import Path
    from statistics import median

    # as the benchmark's worker processes run: metrics in multiprocess mode, the threaded worker's pool
    common.configure_env()
    metrics_dir = common.scratch_dir("profile-metrics")
    for f in metrics_dir.glob("*.db"):
        f.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    cases = args.case or ["threaded"]
    if len(cases) != 1 or CASES[cases[0]].pool or CASES[cases[0]].worker_class.endswith(".AIPBWorker"):
        raise SystemExit("--profile runs the attempts in this process: one --case, simple or threaded")
    if cases[0] == "threaded":
        os.environ.update(AI_WORKER_THREADS=str(THREADS), DATABASE_POOL_MAX_SIZE=str(THREADS // 2))
    import django

    django.setup()
    jobs = args.profile
    out_dir = Path(args.profile_out) if args.profile_out else common.scratch_dir("profile")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for key in cases:
        case = CASES[key]
        out = profile_attempts(case, jobs=jobs, out_dir=out_dir, rounds=args.rounds or 3)
        results[key] = out
        ours, bare = out["ours"], out["bare"]
        print(f"\n== {case.label}, in this process, {jobs} jobs (profiles in {out_dir})")
        for name, pick in (("least", min), ("median", median)):
            a, b = pick(ours["cpu_ms"]), pick(bare["cpu_ms"])
            print(
                f"CPU per job, {name} of {len(ours['cpu_ms'])} unprofiled runs: ours {a:.2f} ms, bare RQ {b:.2f} ms "
                f"(ours/bare {a / b:.2f}x the CPU)"
            )
        print(f"metric value writes per job: ours {ours['metric_writes']:.1f}, bare {bare['metric_writes']:.1f}")
        if key == "simple":
            counts = round_trips(jobs=100)
            for kind, label in (("ours", "ours, one attempt"), ("bare", "bare RQ no-op")):
                c = counts[kind]
                print(
                    f"per job, {label}: {c['sql']:.1f} SQL statements, {c['commits']:.1f} commits, "
                    f"{c['redis_round_trips']:.1f} Redis round trips ({c['redis_commands']:.1f} commands)"
                )
        for kind, ours_only in (("ours", False), ("ours", True), ("bare", False)):
            top = profile_top(out[kind]["stats"], jobs=jobs, top=args.profile_top, ours_only=ours_only)
            for order in ("cumulative", "own"):
                title = f"{kind}{' (our modules only)' if ours_only else ''}, by {order} ms per job"
                print(f"\n-- {title}\n{'calls/job':>9} {'cum ms':>7} {'own ms':>7}  function")
                for name, calls, cumulative, own in top[order]:
                    print(f"{calls:9.1f} {cumulative:7.3f} {own:7.3f}  {name}")
    return results


def main(argv=None) -> dict:
    def extra(parser):
        parser.add_argument("--jobs", type=int, default=None, help="jobs per run (default 5000, quick 300)")
        parser.add_argument(
            "--fork-jobs", type=int, default=None, help="jobs per run with the forking worker (default 500, quick 100)"
        )
        parser.add_argument("--workers", type=int, default=None, help="worker processes (default 2 x cores)")
        parser.add_argument("--case", action="append", choices=sorted(CASES), help="run only these setups")
        parser.add_argument("--tracing", action="store_true", help="tracing on vs off instead (default case threaded)")
        parser.add_argument(
            "--rounds",
            type=int,
            default=None,
            help="--tracing: off/on rounds (default 3, quick 1); --profile: unprofiled runs of each (default 3)",
        )
        parser.add_argument(
            "--profile", type=int, default=None, metavar="N", help="instead, profile N jobs in this process"
        )
        parser.add_argument("--profile-out", default=None, help="--profile: where the .prof files go")
        parser.add_argument(
            "--steps", type=int, default=None, metavar="N", help="instead, time an attempt's steps over N jobs"
        )
        parser.add_argument("--profile-top", type=int, default=25, help="--profile: entries per list (default 25)")

    args = common.parse_args(__doc__.splitlines()[0], argv, extra)
    if args.profile:
        return main_profile(args)
    if args.steps:
        return main_steps(args)
    common.setup_django()
    if args.tracing:
        return main_tracing(args)

    jobs = args.jobs or (300 if args.quick else 5000)
    fork_jobs = args.fork_jobs or (100 if args.quick else 500)
    workers = args.workers or 2 * (os.cpu_count() or 1)
    cases = [CASES[key] for key in (args.case or list(CASES))]
    report = common.Report(f"1. Pipeline throughput ({workers} worker processes)", quick=args.quick)
    log = common.log_file("pipeline-workers")
    results: dict = {}
    for case in cases:
        n = fork_jobs if case.worker_class.endswith("AIPBWorker") else jobs
        idle_cpu = startup_cpu(case, workers, log=log)
        bare = run_bare(case, jobs=n, workers=workers, log=log)
        ours = run_ours(case, jobs=n, workers=workers, log=log)
        fraction = ours.rate / bare.rate if bare.rate else 0.0
        ours_cpu = (ours.cpu_s - idle_cpu) * 1000 / n
        bare_cpu = (bare.cpu_s - idle_cpu) * 1000 / n
        results[case.key] = {"ours": ours, "bare": bare, "fraction": fraction, "cpu_ms": (ours_cpu, bare_cpu)}
        report.figure(
            f"{case.label}: ours, {n} jobs",
            f"{ours.rate:.0f} jobs/s ({ours.ok}/{n} succeeded; drain {ours.drain_s:.1f} s)",
            f">= {TARGET_RATE:.0f} jobs/s",
            common.meets(ours.rate, TARGET_RATE),
        )
        report.figure(
            f"{case.label}: bare RQ no-op, {n} jobs",
            f"{bare.rate:.0f} jobs/s ({bare.ok}/{n} finished; drain {bare.drain_s:.1f} s)",
        )
        report.figure(
            f"{case.label}: ours / bare RQ",
            f"{fraction:.2f}",
            f">= {TARGET_FRACTION}",
            common.meets(fraction, TARGET_FRACTION),
        )
        report.figure(
            f"{case.label}: worker CPU per job, ours / bare RQ",
            f"{ours_cpu:.1f} ms / {bare_cpu:.1f} ms (start-up excluded); CPU-bound ceiling on "
            f"{os.cpu_count()} cores {1000 * (os.cpu_count() or 1) / ours_cpu:.0f} / "
            f"{1000 * (os.cpu_count() or 1) / bare_cpu:.0f} jobs/s",
        )
        report.figure(
            f"{case.label}: submit (job_submit in one process, {SUBMIT_BATCH} per transaction)",
            f"{n / ours.submit_s:.0f} jobs/s; submit then drain, end to end: {n / (ours.submit_s + ours.drain_s):.0f}"
            " jobs/s",
        )
    sample = 100 if args.quick else 300
    counts = round_trips(jobs=sample)
    results["round_trips"] = counts
    for kind, label in (("submit", "job_submit"), ("ours", "ours, one attempt"), ("bare", "bare RQ no-op")):
        c = counts[kind]
        report.figure(
            f"per job, {label}",
            f"{c['sql']:.1f} SQL statements, {c['commits']:.1f} commits, {c['redis_round_trips']:.1f} Redis round "
            f"trips ({c['redis_commands']:.1f} commands)",
        )
    report.note(
        "drain rate = jobs / (first start .. last finish), from the rows (ours) and RQ's job hashes (bare RQ), so "
        "worker start-up counts for neither; rate limiter off (AI_RATE_LIMIT_PER_SECOND=0); metrics on "
        "(PROMETHEUS_MULTIPROC_DIR set); the forking cases run fewer jobs (--fork-jobs) to keep the run short"
    )
    report.note(
        f"per-job round trips counted in one AIPBSimpleWorker in the benchmark process over {sample} jobs; "
        "they do not depend on how busy the machine is, the rates do"
    )
    if not args.no_save:
        report.save()
    return results


def main_tracing(args) -> dict:
    from statistics import median

    jobs = args.jobs or (200 if args.quick else 2000)
    workers = args.workers or os.cpu_count() or 1
    rounds = args.rounds or (1 if args.quick else 3)
    report = common.Report(f"1b. Tracing overhead ({workers} worker processes)", quick=args.quick)
    log = common.log_file("pipeline-tracing")
    results = {}
    for key in args.case or ["threaded"]:
        case = CASES[key]
        out = tracing_overhead(case, jobs=jobs, workers=workers, rounds=rounds, log=log)
        off, on, sql = (median(out["cpu_ms"][mode]) for mode in TRACING_MODES)
        overhead = on / off - 1 if off > 0 else 0.0
        overhead_sql = sql / off - 1 if off > 0 else 0.0
        results[key] = {**out, "off_ms": off, "on_ms": on, "overhead": overhead, "overhead_sql": overhead_sql}
        columns = zip(*(out["cpu_ms"][mode] for mode in TRACING_MODES), strict=True)
        rounds_text = ", ".join("/".join(f"{v:.2f}" for v in values) for values in columns)
        report.figure(
            f"{case.label}: worker CPU per job, tracing off / on, {jobs} jobs, median of {rounds}",
            f"{off:.2f} ms / {on:.2f} ms (+{overhead * 100:.1f} %); rounds off/on/on with SQL spans: {rounds_text}",
            f"<= +{TARGET_TRACING_OVERHEAD * 100:.0f} %",
            common.meets(overhead, TARGET_TRACING_OVERHEAD, higher_is_better=False),
        )
        report.figure(
            f"{case.label}: worker CPU per job, tracing on with a span per SQL statement too (AIPB_TRACE_SQL=1)",
            f"{sql:.2f} ms (+{overhead_sql * 100:.1f} %)",
        )
        report.figure(
            f"{case.label}: exported with tracing on",
            f"{out['attempt_spans']} aipb.attempt spans per round ({jobs} jobs each); {out['spans']} spans in "
            f"{out['requests']} OTLP requests in all",
        )
    report.note(
        "tracing on = OTEL_EXPORTER_OTLP_ENDPOINT at a loopback OTLP/HTTP receiver in the benchmark process (decoding "
        "there, not in the workers), every span sampled (the SDK's default parentbased_always_on), the SDK's "
        "default batch processor; jobs submitted untraced by the benchmark process, so each attempt starts a "
        "trace; start-up CPU of each mode subtracted (the SDK and instrumentations' import is start-up)"
    )
    if not args.no_save:
        report.save()
    return results


if __name__ == "__main__":
    main()
