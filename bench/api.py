"""Benchmark 4: the jobs API under load, against gunicorn on this machine.

gunicorn (`aipb.wsgi`, the project's gunicorn_conf, sync workers, 2 x cores + 1 of them unless --web-workers)
on a free loopback port, with the benchmark's environment; token auth. bench.loadgen drives it closed-loop:
``POST /api/ai/jobs`` (a simulated job each; no worker runs, so they stay queued in Redis), then
``GET /api/ai/jobs/{id}`` over 1,000 existing jobs. Figures: req/s, p50, p99, errors; and, measured in this
process with DRF's test client, the SQL statements and Redis round trips of one request of each kind.

The submit throttle (AI_SUBMIT_THROTTLE_RATE, 6000/min per user by default) is raised for the run: it would
otherwise be what is measured.

    python -m bench.api [--quick] [--seconds S] [--web-workers N] [--clients P T]
"""

from __future__ import annotations

import os
import time
import urllib.request

from bench import common, loadgen

TARGET_RPS = 500.0
TARGET_P99_MS = 50.0


def start_gunicorn(*, workers: int, log) -> tuple:
    port = common.free_port()
    metrics_dir = common.scratch_dir("metrics-api")
    for f in metrics_dir.glob("*.db"):
        f.unlink()
    env = common.worker_env(
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
    )
    cmd = [common.PY, "-m", "gunicorn", "aipb.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    cmd += ["--config", "python:aipb.gunicorn_conf", "--access-logfile", "/dev/null"]
    proc = common.spawn(cmd, env=env, log=log)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            common.stop(proc)
            raise RuntimeError(f"gunicorn did not start; see {log}")
        time.sleep(0.2)
    time.sleep(1.0)  # let every worker finish booting
    return proc, port


def per_request_counts(token_user) -> dict:
    """SQL statements and Redis round trips of one POST and one GET, in this process (DRF's test client)."""
    from rest_framework.test import APIClient

    from bench.pipeline import _Counter

    client = APIClient(HTTP_HOST="localhost")
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_user}")
    body = {"prompt": "A page about counting queries", "provider": "simulated", "model": "sim-small"}
    client.post("/api/ai/jobs", body, format="json")  # warm caches (content types, URL resolver)
    out = {}
    n = 20
    with _Counter() as c:
        ids = [client.post("/api/ai/jobs", body, format="json").json()["id"] for _ in range(n)]
    out["post"] = c
    with _Counter() as c:
        for job_id in ids:
            client.get(f"/api/ai/jobs/{job_id}")
    out["get"] = c
    return {k: {"sql": v.sql / n, "redis": v.redis_round_trips / n, "commits": v.commits / n} for k, v in out.items()}


def main(argv=None) -> dict:
    def extra(parser):
        parser.add_argument("--seconds", type=float, default=None, help="per endpoint (default 20, quick 5)")
        parser.add_argument("--web-workers", type=int, default=None, help="gunicorn workers (default 2 x cores + 1)")
        parser.add_argument("--clients", type=int, nargs=2, default=(2, 8), metavar=("PROCESSES", "THREADS"))

    args = common.parse_args(__doc__.splitlines()[0], argv, extra)
    os.environ["AI_SUBMIT_THROTTLE_RATE"] = "1000000/min"  # here and in gunicorn: measure the API, not the throttle
    common.setup_django()
    from rest_framework.authtoken.models import Token

    from jobs.submission import job_submit

    seconds = args.seconds or (5.0 if args.quick else 20.0)
    web_workers = args.web_workers or 2 * (os.cpu_count() or 1) + 1
    processes, threads = args.clients
    report = common.Report(
        f"4. API under load (gunicorn, {web_workers} sync workers; {processes}x{threads} closed-loop clients, "
        f"{seconds:.0f} s per endpoint)",
        quick=args.quick,
    )
    common.reset_state()
    user = common.bench_user()
    token, _ = Token.objects.get_or_create(user=user)
    ids = [
        str(
            job_submit(owner=user, prompt=f"An existing page {i}", provider="simulated", model="sim-small", options={})[
                0
            ].id
        )
        for i in range(1000)
    ]
    log = common.log_file("api-gunicorn")
    proc, port = start_gunicorn(workers=web_workers, log=log)
    headers = {"Authorization": f"Token {token.key}", "Content-Type": "application/json", "Accept": "application/json"}
    post_plan = [
        (
            "POST",
            "/api/ai/jobs",
            loadgen.json_body(
                {"prompt": f"A landing page for a bakery, variant {i}", "provider": "simulated", "model": "sim-small"}
            ),
        )
        for i in range(100)
    ]
    get_plan = [("GET", f"/api/ai/jobs/{job_id}", None) for job_id in ids]
    results = {}
    try:
        for name, plan in (("POST /api/ai/jobs", post_plan), ("GET /api/ai/jobs/{id}", get_plan)):
            r = loadgen.run(
                host="127.0.0.1",
                port=port,
                plan=plan,
                headers=headers,
                processes=processes,
                threads=threads,
                seconds=seconds,
            )
            rps = r.requests / r.seconds
            p50, p99 = common.percentile(r.latencies_ms, 0.5), common.percentile(r.latencies_ms, 0.99)
            results[name] = {"rps": rps, "p50": p50, "p99": p99, "errors": r.errors, "requests": r.requests}
            is_post = name.startswith("POST")
            report.figure(
                f"{name}: throughput",
                f"{rps:.0f} req/s ({r.requests} requests)",
                f">= {TARGET_RPS:.0f} req/s" if is_post else "",
                common.meets(rps, TARGET_RPS) if is_post else None,
            )
            report.figure(
                f"{name}: latency",
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
                f"p99 <= {TARGET_P99_MS:.0f} ms" if is_post else "",
                common.meets(p99, TARGET_P99_MS, higher_is_better=False) if is_post else None,
            )
            report.figure(
                f"{name}: errors",
                f"{r.errors} ({', '.join(f'{k}: {v}' for k, v in sorted(r.statuses.items()))})"
                + (f"; e.g. {r.samples[0]}" if r.samples else ""),
            )
            report.figure(
                f"{name}: load generator CPU",
                f"{r.client_cpu_s / r.seconds * 100:.0f} % of one core (shares the machine with the server)",
            )
    finally:
        common.stop(proc)
    counts = per_request_counts(token.key)
    for kind, label in (("post", "POST"), ("get", "GET")):
        c = counts[kind]
        report.figure(
            f"per request, {label}",
            f"{c['sql']:.1f} SQL statements, {c['commits']:.1f} commits, {c['redis']:.1f} Redis round trips",
        )
    if not args.no_save:
        report.save()
    return results


if __name__ == "__main__":
    main()
