"""Benchmark 7: batch intake: 10,000 jobs as 10 batches of 1,000 through gunicorn, in jobs accepted per second.

gunicorn as bench.api starts it (`aipb.wsgi`, the project's gunicorn_conf, sync workers, 2 x cores + 1 unless
--web-workers; token auth); the batches are POSTed to /api/ai/batches by --clients threads at once, their
bodies encoded beforehand. A batch is accepted when its 201 arrives: its jobs are committed and their
deliveries are in Redis (no worker runs; they stay queued). Figures: jobs/s accepted over the whole run
(first request sent to last answer), each batch's latency, the server's CPU per job (the gunicorn workers and
the Postgres backends of the benchmark database), then, in this process through the same WSGI application,
SQL statements, Postgres round trips, transactions and Redis round trips per job (bench.counting), as the
pipeline bench counts them per job. The load average is printed with the figures: the machine is shared.

The submit throttle is raised for the run, as in bench.api: each job counts against it, and it would
otherwise be what is measured.

    python -m bench.batches [--quick] [--batches N] [--size N] [--clients N] [--web-workers N]
"""

from __future__ import annotations

import json
import os
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from bench import common, counting

TARGET_JOBS_PER_SECOND = 5000.0  # issue 19
SETTINGS_MODULE = "bench.settings"
ITEM = {"provider": "simulated", "model": "sim-small"}


def batch_body(n: int, tag: str) -> bytes:
    return json.dumps({"jobs": [{"prompt": f"Page {i} of site {tag}", **ITEM} for i in range(n)]}).encode()


def post(port: int, token: str, body: bytes) -> tuple[int, float, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/ai/batches",
        data=body,
        method="POST",
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as response:
        payload = json.loads(response.read())
        return response.status, time.perf_counter() - started, payload


def main(argv=None) -> dict:
    def extra(parser):
        parser.add_argument("--batches", type=int, default=None, help="batches to submit (default 10, quick 4)")
        parser.add_argument("--size", type=int, default=1000, help="jobs per batch (default 1000)")
        parser.add_argument("--clients", type=int, default=2, help="batches in flight at once (default 2)")
        parser.add_argument("--web-workers", type=int, default=None, help="gunicorn workers (default 2 x cores + 1)")

    args = common.parse_args(__doc__.splitlines()[0], argv, extra)
    n_batches = args.batches or (4 if args.quick else 10)
    os.environ["AI_SUBMIT_THROTTLE_RATE"] = "100000000/min"  # here and in gunicorn: measure intake, not the throttle
    os.environ["AI_BATCH_MAX_JOBS"] = str(max(args.size, 1000))
    common.configure_env()
    common.ensure_database()
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    os.environ["DJANGO_ALLOWED_HOSTS"] = "127.0.0.1,localhost"
    import django

    django.setup()
    from django.db import connections
    from rest_framework.authtoken.models import Token

    from bench import anchor
    from bench.api import InProcess, cpu_sample, cpu_spent, start_gunicorn
    from jobs.models import AIJob, Batch
    from jobs.queues import all_queues

    web_workers = args.web_workers or 2 * (os.cpu_count() or 1) + 1
    report = common.Report(
        f"7. batch intake: {n_batches} batches of {args.size} jobs through gunicorn "
        f"({web_workers} sync workers, {args.clients} batches in flight)",
        quick=args.quick,
    )
    common.reset_state()
    anchor.ensure_table()
    anchor_id = anchor.AnchorRow.objects.create(note="warm-up").id
    token = Token.objects.get_or_create(user=common.bench_user())[0].key
    bodies = [batch_body(args.size, str(i)) for i in range(n_batches)]
    database = connections["default"].settings_dict["NAME"]
    connections.close_all()

    log = common.log_file("batches-gunicorn")
    proc, port = start_gunicorn(workers=web_workers, log=log, anchor_id=anchor_id)
    try:
        post(port, token, batch_body(10, "warm-up"))  # the first request of each path imports its modules
        before = cpu_sample(proc.pid, database)
        load_before = os.getloadavg()
        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            answers = list(pool.map(lambda body: post(port, token, body), bodies))
        wall = time.perf_counter() - started
        load_after = os.getloadavg()
        web_ms, db_ms = cpu_spent(before, cpu_sample(proc.pid, database))
    finally:
        common.stop(proc)

    statuses = [status for status, _, _ in answers]
    if any(status != 201 for status in statuses):
        raise RuntimeError(f"not every batch was accepted: {statuses}")
    jobs = n_batches * args.size
    batch_ids = [payload["id"] for _, _, payload in answers]
    stored = AIJob.objects.filter(batch_id__in=batch_ids).count()
    queued = sum(queue.count for queue in all_queues())
    if stored != jobs or queued != jobs + 10:  # + the warm-up batch's
        raise RuntimeError(f"{jobs} jobs submitted, {stored} stored, {queued} deliveries queued")
    rate = jobs / wall
    latencies = sorted(seconds for _, seconds, _ in answers)
    report.figure(
        "jobs accepted per second",
        f"{rate:,.0f} jobs/s ({jobs:,} jobs in {wall:.2f} s)",
        f">= {TARGET_JOBS_PER_SECOND:,.0f} jobs/s",
        common.meets(rate, TARGET_JOBS_PER_SECOND),
    )
    report.figure(
        f"latency of one batch of {args.size}",
        f"median {statistics.median(latencies) * 1000:.0f} ms, slowest {latencies[-1] * 1000:.0f} ms",
    )
    report.figure(
        "server CPU per job",
        f"{web_ms * 1000 / jobs:.3f} ms gunicorn workers + {db_ms * 1000 / jobs:.3f} ms Postgres backends",
    )
    report.figure(
        "load average (1, 5, 15 min) before / after the run",
        f"{' '.join(f'{v:.2f}' for v in load_before)} / {' '.join(f'{v:.2f}' for v in load_after)}",
    )
    report.figure("every job stored and its delivery queued", f"{stored:,} rows, {queued:,} deliveries (with warm-up)")

    # Counted in this process, through the same WSGI application: what one batch costs, per job.
    client = InProcess(token)
    client.call("POST", "/api/ai/batches", batch_body(10, "in-process warm-up"))
    body = batch_body(args.size, "counted")
    with counting.Counter() as c:
        status, payload = client.call("POST", "/api/ai/batches", body)
    if status != 201:
        raise RuntimeError(f"in-process batch: {status} {payload[:300]!r}")
    per_job = c.counts.per(args.size)
    report.figure(
        f"per job, in a batch of {args.size}",
        f"{per_job['sql']:.4f} SQL statements, {per_job['pg_round_trips']:.4f} Postgres round trips, "
        f"{per_job['redis_round_trips']:.4f} Redis round trips ({per_job['redis_commands']:.1f} commands)",
    )
    report.figure(f"per batch of {args.size}", counting.describe(c.counts.per(1)))
    report.note(
        "the jobs' COPY is one statement (one round trip) that Django's execute wrapper, which bench.counting "
        "counts SQL statements with, does not see: a batch is 3 statements (the token, the batch's INSERT, the "
        "jobs' COPY) in one transaction"
    )
    batch_id = json.loads(payload)["id"]
    with counting.Counter() as c:
        client.call("GET", f"/api/ai/batches/{batch_id}")
    report.figure("per GET /api/ai/batches/{id}", counting.describe(c.counts.per(1)))
    started = time.process_time()
    client.call("POST", "/api/ai/batches", batch_body(args.size, "cpu"))
    cpu_ms = (time.process_time() - started) * 1000
    report.figure("CPU per job in one process (Django + DRF + ours + client libraries)", f"{cpu_ms / args.size:.3f} ms")
    report.note(f"{Batch.objects.count()} batches, {AIJob.objects.count():,} jobs in the database at the end")
    if not args.no_save:
        report.save()
    return {"jobs_per_second": rate, "per_job": per_job, "wall": wall}


if __name__ == "__main__":
    main()
