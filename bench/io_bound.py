"""Benchmark 2: I/O-bound concurrency. Simulated provider latency 1 s (or --latency-ms), concurrency 10 and 50.

Concurrency is the number of attempts in flight: for the one-job-at-a-time classes the worker processes of one
``manage.py rqworker-pool --num-workers C`` (a slot is one worker and, with the forking class, its
work-horse); for the threaded class two processes (one per core) of C/2 threads each, with Django's psycopg
pool (the peak of Postgres connections in use, from pg_stat_activity, is printed against the pool size).
The bound is C / latency jobs/s; efficiency is the
achieved rate (jobs / (first start .. last finish)) over that bound. Memory per slot is the pool's total
PSS (and RSS) sampled at its peak while every slot is busy, divided by C.

    python -m bench.io_bound [--quick] [--concurrency 10 --concurrency 50] [--rounds R] [--latency-ms MS]
                             [--worker-class simple|fork|threaded ...]
"""

from __future__ import annotations

import os
import threading

from bench import common

LATENCY_MS = 1000
TARGET_EFFICIENCY = 0.95
QUEUES = ["ai-high", "ai-default", "ai-low"]
WORKER_CLASSES = {
    "simple": "jobs.worker.AIPBSimpleWorker",
    "fork": "jobs.worker.AIPBWorker",
    "threaded": "jobs.threaded_worker.AIPBThreadedWorker",
}
THREADED_PROCESSES = 2  # one per core on this machine


def _peak_connections(stop: threading.Event, peak: dict) -> None:
    from django.db import connection

    while not stop.is_set():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            peak["connections"] = max(peak.get("connections", 0), cursor.fetchone()[0])
        stop.wait(0.2)
    connection.close()


def _sample_memory(pid: int, stop: threading.Event, peak: dict) -> None:
    while not stop.is_set():
        m = common.tree_memory_kib(pid)
        if m["pss"] > peak.get("pss", 0):
            peak.update(m)
        stop.wait(0.5)


def run(*, concurrency: int, rounds: int, worker_class: str, log, latency_ms: int = LATENCY_MS) -> dict:
    from django.db.models import Max, Min

    from jobs.models import AIJob, JobStatus
    from jobs.submission import job_submit

    common.reset_state()
    owner = common.bench_user()
    jobs = concurrency * rounds
    for i in range(jobs):
        job_submit(
            owner=owner,
            prompt=f"An I/O-bound landing page number {i}",
            provider="simulated",
            model="sim-small",
            options={"simulate": {"latency_ms": latency_ms}},
        )
    metrics_dir = common.scratch_dir("metrics-io")
    for f in metrics_dir.glob("*.db"):
        f.unlink()
    env = common.worker_env(AI_RATE_LIMIT_PER_SECOND="0", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    processes, pool_size = concurrency, 0
    if worker_class == WORKER_CLASSES["threaded"]:
        processes = min(THREADED_PROCESSES, concurrency)
        threads = -(-concurrency // processes)
        pool_size = int(os.environ.get("BENCH_POOL_SIZE") or max(2, -(-threads // 4)))
        env.update(AI_WORKER_THREADS=str(threads), DATABASE_POOL_MAX_SIZE=str(pool_size))
        env["AI_PROVIDER_TIMEOUT_SECONDS"] = str(max(60, latency_ms / 1000 * 2))
    cmd = [common.PY, "manage.py", "rqworker-pool", *QUEUES, "--num-workers", str(processes), "--burst"]
    cmd += ["--worker-class", worker_class, "-v", "0"]
    proc = common.spawn(cmd, env=env, log=log)
    peak: dict = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_memory, args=(proc.pid, stop, peak), daemon=True)
    sampler.start()
    connections: dict = {}
    counter = threading.Thread(target=_peak_connections, args=(stop, connections), daemon=True)
    counter.start()
    try:
        common.wait_all([proc], timeout=120 + rounds * latency_ms / 1000 * 3)
    finally:
        stop.set()
        sampler.join()
        counter.join()
    span = AIJob.objects.aggregate(first=Min("started_at"), last=Max("finished_at"))
    ok = AIJob.objects.filter(status=JobStatus.SUCCEEDED).count()
    overall = jobs / (span["last"] - span["first"]).total_seconds()
    # Steady state: from the moment every slot had started a job to the moment the last job started.
    starts = sorted(t.timestamp() for t in AIJob.objects.values_list("started_at", flat=True) if t)
    t_a, t_b = starts[min(concurrency, len(starts)) - 1], starts[-1]
    steady = sum(1 for t in starts if t_a < t <= t_b) / (t_b - t_a) if t_b > t_a else 0.0
    bound = concurrency / (latency_ms / 1000)
    return {
        "jobs": jobs,
        "ok": ok,
        "rate": steady,
        "overall_rate": overall,
        "ramp_s": t_a - starts[0],
        "bound": bound,
        "efficiency": steady / bound,
        "pss_per_slot_mib": peak.get("pss", 0) / 1024 / concurrency,
        "rss_per_slot_mib": peak.get("rss", 0) / 1024 / concurrency,
        "processes": peak.get("processes", 0),
        "total_pss_mib": peak.get("pss", 0) / 1024,
        "worker_processes": processes,
        "pool_size": pool_size * processes,
        "peak_connections": connections.get("connections", 0),
    }


def main(argv=None) -> dict:
    def extra(parser):
        parser.add_argument("--concurrency", type=int, action="append", help="default 10 and 50")
        parser.add_argument("--rounds", type=int, default=None, help="jobs per slot (default 10, quick 4)")
        parser.add_argument(
            "--worker-class", action="append", choices=sorted(WORKER_CLASSES), help="default: all three"
        )
        parser.add_argument("--latency-ms", type=int, default=LATENCY_MS, help="the simulated call's latency")

    args = common.parse_args(__doc__.splitlines()[0], argv, extra)
    common.setup_django()
    rounds = args.rounds or (4 if args.quick else 10)
    levels = args.concurrency or [10, 50]
    classes = args.worker_class or ["threaded", "simple", "fork"]
    report = common.Report(
        f"2. I/O-bound concurrency (latency {args.latency_ms} ms, {rounds} jobs per slot)", quick=args.quick
    )
    log = common.log_file("io-bound-workers")
    results = {}
    for key in classes:
        for concurrency in levels:
            r = run(
                concurrency=concurrency,
                rounds=rounds,
                worker_class=WORKER_CLASSES[key],
                log=log,
                latency_ms=args.latency_ms,
            )
            results[(key, concurrency)] = r
            label = f"pool of {WORKER_CLASSES[key].rsplit('.', 1)[1]}, concurrency {concurrency}"
            report.figure(
                f"{label}: efficiency in steady state",
                f"{r['efficiency'] * 100:.1f} % ({r['rate']:.2f} of {r['bound']:.0f} jobs/s; {r['ok']}/{r['jobs']} "
                "succeeded)",
                f">= {TARGET_EFFICIENCY * 100:.0f} %",
                common.meets(r["efficiency"], TARGET_EFFICIENCY),
            )
            report.figure(
                f"{label}: whole run",
                f"{r['overall_rate']:.2f} jobs/s first start to last finish; {r['ramp_s']:.1f} s until every slot "
                "had started a job",
            )
            report.figure(
                f"{label}: memory per slot",
                f"PSS {r['pss_per_slot_mib']:.1f} MiB, RSS {r['rss_per_slot_mib']:.1f} MiB "
                f"(peak {r['total_pss_mib']:.0f} MiB PSS over {r['processes']} processes)",
            )
            pool = f" (pool {r['pool_size']} over {r['worker_processes']} processes)" if r["pool_size"] else ""
            report.figure(f"{label}: Postgres connections in use at peak", f"{r['peak_connections']}{pool}")
    report.note(
        "steady state runs from the moment every slot had started its first job to the last job's start, and "
        "counts the starts in between: the pool's ramp-up (workers forked one after another, each registering "
        "with Redis) is shown apart, as 'whole run'"
    )
    report.note(
        "PSS splits pages shared after fork between the processes sharing them (the honest per-slot cost); RSS "
        "counts them in every process. Slots are processes: one job in flight per worker process"
    )
    if not args.no_save:
        report.save()
    return results


if __name__ == "__main__":
    main()
