"""Benchmark 2: I/O-bound concurrency. Simulated provider latency 1 s, concurrency 10 and 50.

Concurrency is the number of worker processes of one ``manage.py rqworker-pool --num-workers C`` (a slot is
one worker and, with the forking class, its work-horse). The bound is C / latency jobs/s; efficiency is the
achieved rate (jobs / (first start .. last finish)) over that bound. Memory per slot is the pool's total
PSS (and RSS) sampled at its peak while every slot is busy, divided by C.

    python -m bench.io_bound [--quick] [--concurrency 10 --concurrency 50] [--rounds R] [--worker-class ...]
"""

from __future__ import annotations

import threading

from bench import common

LATENCY_MS = 1000
TARGET_EFFICIENCY = 0.95
QUEUES = ["ai-high", "ai-default", "ai-low"]
WORKER_CLASSES = {
    "simple": "jobs.worker.AIPBSimpleWorker",
    "fork": "jobs.worker.AIPBWorker",
}


def _sample_memory(pid: int, stop: threading.Event, peak: dict) -> None:
    while not stop.is_set():
        m = common.tree_memory_kib(pid)
        if m["pss"] > peak.get("pss", 0):
            peak.update(m)
        stop.wait(0.5)


def run(*, concurrency: int, rounds: int, worker_class: str, log) -> dict:
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
            options={"simulate": {"latency_ms": LATENCY_MS}},
        )
    metrics_dir = common.scratch_dir("metrics-io")
    for f in metrics_dir.glob("*.db"):
        f.unlink()
    env = common.worker_env(AI_RATE_LIMIT_PER_SECOND="0", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    cmd = [common.PY, "manage.py", "rqworker-pool", *QUEUES, "--num-workers", str(concurrency), "--burst"]
    cmd += ["--worker-class", worker_class, "-v", "0"]
    proc = common.spawn(cmd, env=env, log=log)
    peak: dict = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_memory, args=(proc.pid, stop, peak), daemon=True)
    sampler.start()
    try:
        common.wait_all([proc], timeout=120 + rounds * LATENCY_MS / 1000 * 3)
    finally:
        stop.set()
        sampler.join()
    span = AIJob.objects.aggregate(first=Min("started_at"), last=Max("finished_at"))
    ok = AIJob.objects.filter(status=JobStatus.SUCCEEDED).count()
    overall = jobs / (span["last"] - span["first"]).total_seconds()
    # Steady state: from the moment every slot had started a job to the moment the last job started.
    starts = sorted(t.timestamp() for t in AIJob.objects.values_list("started_at", flat=True) if t)
    t_a, t_b = starts[min(concurrency, len(starts)) - 1], starts[-1]
    steady = sum(1 for t in starts if t_a < t <= t_b) / (t_b - t_a) if t_b > t_a else 0.0
    bound = concurrency / (LATENCY_MS / 1000)
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
    }


def main(argv=None) -> dict:
    def extra(parser):
        parser.add_argument("--concurrency", type=int, action="append", help="default 10 and 50")
        parser.add_argument("--rounds", type=int, default=None, help="jobs per slot (default 10, quick 4)")
        parser.add_argument(
            "--worker-class", action="append", choices=sorted(WORKER_CLASSES), help="default: simple and fork"
        )

    args = common.parse_args(__doc__.splitlines()[0], argv, extra)
    common.setup_django()
    rounds = args.rounds or (4 if args.quick else 10)
    levels = args.concurrency or [10, 50]
    classes = args.worker_class or ["simple", "fork"]
    report = common.Report(
        f"2. I/O-bound concurrency (latency {LATENCY_MS} ms, {rounds} jobs per slot)", quick=args.quick
    )
    log = common.log_file("io-bound-workers")
    results = {}
    for key in classes:
        for concurrency in levels:
            r = run(concurrency=concurrency, rounds=rounds, worker_class=WORKER_CLASSES[key], log=log)
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
