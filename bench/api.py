"""Benchmark 4: the jobs API under load, as a ratio to what the same stack serves for a trivial view.

gunicorn (`aipb.wsgi`, the project's gunicorn_conf, sync workers, 2 x cores + 1 of them unless --web-workers)
on a free loopback port, with the benchmark's environment and ``bench.settings`` (aipb.settings with the
bench's own URLconf, ``bench.anchor``: the anchor views in front of aipb.urls; production's URLconf never
names them); token auth. bench.loadgen drives it closed-loop, in rounds of four phases:

- the anchor: ``POST /bench/anchor`` (a plain Django view writing one row through the ORM, every middleware
  of aipb.settings on the way) and ``GET /bench/anchor/{id}`` (reading one);
- ours: ``POST /api/ai/jobs`` (a simulated job each; no worker runs, so they stay queued in Redis) and
  ``GET /api/ai/jobs/{id}`` over 1,000 existing jobs.

Figures: req/s as a fraction of the anchor's in the same round, p50, p99, errors, and the server's CPU per
request (the gunicorn workers, and the Postgres backends of the benchmark database, read from /proc). Then,
in this process through the same WSGI application: per-request SQL statements, Postgres round trips,
transactions and Redis round trips (bench.counting), and CPU ms per request with no profiler attached.

``--profile N`` is the profile mode: no gunicorn; N POSTs and N GETs through the WSGI application in this
process under cProfile, the top entries by cumulative and by own time printed (``--top``), and saved with
``--profile-out DIR`` (``post.prof``, ``get.prof`` for pstats/snakeviz, and the printed text).

The submit throttle (AI_SUBMIT_THROTTLE_RATE, 6000/min per user by default) is raised for the run: it would
otherwise be what is measured. Metrics are kept as in production: PROMETHEUS_MULTIPROC_DIR is set, here too.

    python -m bench.api [--quick] [--seconds S] [--rounds R] [--web-workers N] [--clients P T]
    python -m bench.api --profile N [--top K] [--profile-out DIR]
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import sysconfig
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench import common, counting, loadgen

TARGET_POST_RATIO = 0.40  # of the anchor's POST rate (issue 23)
TARGET_GET_RATIO = 0.60
TARGET_P99_MS = 50.0
SETTINGS_MODULE = "bench.settings"
BODY = {"prompt": "A landing page for a bakery", "provider": "simulated", "model": "sim-small"}
_TICKS = os.sysconf("SC_CLK_TCK")


# --- the server and what it spends ------------------------------------------------------------------


def start_gunicorn(*, workers: int, log, anchor_id: int) -> tuple:
    port = common.free_port()
    metrics_dir = common.scratch_dir("metrics-api")
    for f in metrics_dir.glob("*.db"):
        f.unlink()
    env = common.worker_env(
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        DJANGO_SETTINGS_MODULE=SETTINGS_MODULE,
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
    _wait_for_every_worker(port, workers=workers, anchor_id=anchor_id, proc=proc, log=log)
    return proc, port


def _wait_for_every_worker(port: int, *, workers: int, anchor_id: int, proc, log) -> None:
    """Until each worker has answered once: one still importing Django (1-2 s of CPU each) would be measured
    with the first phase, and slow it down."""
    seen: set[int] = set()
    deadline = time.monotonic() + 120

    def ask(_) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/bench/anchor/{anchor_id}", timeout=10) as r:
                return json.loads(r.read())["pid"]
        except OSError:
            return None

    with ThreadPoolExecutor(2 * workers) as pool:
        while len(seen) < workers:
            seen.update(pid for pid in pool.map(ask, range(4 * workers)) if pid)
            if proc.poll() is not None or time.monotonic() > deadline:
                common.stop(proc)
                raise RuntimeError(f"only {len(seen)} of {workers} gunicorn workers answered; see {log}")


def _cpu_ticks(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime


def _postgres_backends(database: str) -> list[int]:
    """The Postgres backends serving ``database`` on this machine (their title names it)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if title.startswith("postgres: ") and f" {database} " in title:
            pids.append(int(entry.name))
    return pids


@dataclass
class CpuSample:
    web: dict[int, int]
    postgres: dict[int, int]


def cpu_sample(gunicorn_pid: int, database: str) -> CpuSample:
    return CpuSample(
        web={pid: _cpu_ticks(pid) for pid in common.descendants(gunicorn_pid)},
        postgres={pid: _cpu_ticks(pid) for pid in _postgres_backends(database)},
    )


def cpu_spent(before: CpuSample, after: CpuSample) -> tuple[float, float]:
    """Seconds of CPU the web processes and the Postgres backends spent between the samples (a backend that
    started in between counts whole; one that ended in between is missed)."""

    def delta(a: dict[int, int], b: dict[int, int]) -> float:
        return sum(ticks - a.get(pid, 0) for pid, ticks in b.items()) / _TICKS

    return delta(before.web, after.web), delta(before.postgres, after.postgres)


# --- in this process, through the WSGI application ---------------------------------------------------


class InProcess:
    """Requests through the WSGI application in this process: what gunicorn's worker runs, minus the socket."""

    def __init__(self, token: str) -> None:
        from django.core.wsgi import get_wsgi_application

        self.app = get_wsgi_application()
        self.headers = {
            "HTTP_AUTHORIZATION": f"Token {token}",
            "HTTP_ACCEPT": "application/json",
            "CONTENT_TYPE": "application/json",
        }

    def call(self, method: str, path: str, body: bytes = b"", **headers: str) -> tuple[int, bytes]:
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "127.0.0.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "CONTENT_LENGTH": str(len(body)),
            **self.headers,
            **headers,
        }
        status = []
        response = self.app(environ, lambda s, h, exc_info=None: status.append(s))
        try:
            payload = b"".join(response)
        finally:
            response.close()  # request_finished: Django's end-of-request connection handling
        return int(status[0].split()[0]), payload


@dataclass
class Case:
    name: str
    method: str
    paths: list[str]
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200

    def run(self, client: InProcess, n: int) -> None:
        for i in range(n):
            got, payload = client.call(self.method, self.paths[i % len(self.paths)], self.body, **self.headers)
            if got != self.status:
                raise RuntimeError(f"{self.name}: {got} {payload[:300]!r}")


def cases(job_ids: list[str], anchor_ids: list[int], tried_ids: list[str]) -> dict[str, Case]:
    body = json.dumps(BODY).encode()
    return {
        "POST /api/ai/jobs": Case("POST /api/ai/jobs", "POST", ["/api/ai/jobs"], body, status=201),
        "GET /api/ai/jobs/{id}": Case("GET /api/ai/jobs/{id}", "GET", [f"/api/ai/jobs/{i}" for i in job_ids]),
        "anchor POST": Case("anchor POST", "POST", ["/bench/anchor"], body, status=201),
        "anchor GET": Case("anchor GET", "GET", [f"/bench/anchor/{i}" for i in anchor_ids]),
        # in this process only: a job that has run has its attempts to read as well
        "GET /api/ai/jobs/{id}, a job with one attempt": Case(
            "GET /api/ai/jobs/{id}, a job with one attempt", "GET", [f"/api/ai/jobs/{i}" for i in tried_ids]
        ),
    }


def give_one_attempt(job_ids: list[str]) -> None:
    """Bench data only: these jobs look as if one attempt had failed (the pipeline writes it so, in a worker)."""
    from django.utils import timezone

    from jobs.models import AIJob, JobAttempt

    now = timezone.now()
    AIJob.objects.filter(id__in=job_ids).update(attempts=1)
    JobAttempt.objects.bulk_create(
        JobAttempt(job_id=i, number=1, started_at=now, finished_at=now, outcome="failed", error_type="TIMEOUT")
        for i in job_ids
    )


def per_request_counts(client: InProcess, all_cases: dict[str, Case], *, n: int = 20) -> dict[str, dict]:
    out = {}
    for name, case in all_cases.items():
        case.run(client, 3)  # warm: connections, caches
        with counting.Counter() as c:
            case.run(client, n)
        out[name] = c.counts.per(n)
    # the Idempotency-Key path: a new key, then the same request again (a replay answers 200 with the job)
    body = json.dumps(BODY).encode()
    keys = [f"bench-{os.getpid()}-{time.time_ns()}-{i}" for i in range(n)]
    with counting.Counter() as c:
        for key in keys:
            client.call("POST", "/api/ai/jobs", body, HTTP_IDEMPOTENCY_KEY=key)
    out["POST with a new Idempotency-Key"] = c.counts.per(n)
    with counting.Counter() as c:
        for key in keys:
            client.call("POST", "/api/ai/jobs", body, HTTP_IDEMPOTENCY_KEY=key)
    out["POST replaying an Idempotency-Key"] = c.counts.per(n)
    return out


def cpu_per_request(client: InProcess, all_cases: dict[str, Case], *, n: int) -> dict[str, float]:
    """CPU ms per request in this process (Django, DRF, our code, the client libraries), no profiler attached."""
    out = {}
    for name, case in all_cases.items():
        case.run(client, max(5, n // 10))
        t = time.process_time()
        case.run(client, n)
        out[name] = (time.process_time() - t) * 1000 / n
    return out


# Where a request's time goes: (label, file path suffix, function); cumulative, so the rows nest.
BREAKDOWN = (
    ("the whole request (WSGI handler)", "django/core/handlers/wsgi.py", "__call__"),
    ("DRF view (dispatch)", "rest_framework/views.py", "dispatch"),
    ("  authentication (token + user)", "rest_framework/views.py", "perform_authentication"),
    ("  submit throttle", "rest_framework/views.py", "check_throttles"),
    ("  input: parse and validate the body", "aipb/api.py", "parse_body"),
    ("  job_submit", "jobs/submission.py", "job_submit"),
    ("    the INSERT (Model.save)", "django/db/models/base.py", "save"),
    ("    the enqueue (RQ, after the commit)", "jobs/queues.py", "enqueue_delivery"),
    ("  read the job (selectors.job_get)", "jobs/selectors.py", "job_get"),
    ("  output serializer (before)", "rest_framework/serializers.py", "data"),
    ("  output serializer (job_output)", "jobs/serializers.py", "job_output"),
    ("  render JSON", "rest_framework/response.py", "rendered_content"),
    ("across the rows above: psycopg waiting on Postgres", "psycopg/connection.py", "wait"),
    ("across the rows above: django-prometheus middleware", "django_prometheus/middleware.py", "process_request"),
    ("", "django_prometheus/middleware.py", "process_response"),
    ("", "django_prometheus/middleware.py", "process_view"),
)


def breakdown(stats: pstats.Stats, *, n: int, cpu_ms: float | None) -> str:
    """The BREAKDOWN rows: ms per request under the profiler, the share of the whole request, and that share
    of the CPU ms per request measured without the profiler (the profiler's overhead is roughly even)."""
    found: dict[tuple[str, str], float] = {}
    for (filename, _, function), (_, _, _, cumulative, _) in stats.stats.items():
        for _, suffix, name in BREAKDOWN:
            if function == name and filename.endswith(suffix):
                # same-named functions of one module: the largest (Serializer.data calls BaseSerializer.data),
                # except the middleware's hooks, which run one after the other
                if suffix.startswith("django_prometheus"):
                    found[(suffix, name)] = found.get((suffix, name), 0.0) + cumulative
                else:
                    found[(suffix, name)] = max(found.get((suffix, name), 0.0), cumulative)
    rows: list[list] = []
    for label, suffix, name in BREAKDOWN:
        value = found.get((suffix, name), 0.0)
        if label:
            rows.append([label, value])
        else:  # adds to the row above
            rows[-1][1] += value
    whole = rows[0][1] or 1e-9
    lines = []
    for label, value in rows:
        if value:
            share = value / whole
            real = f", ~{share * cpu_ms:.2f} of {cpu_ms:.2f} ms CPU" if cpu_ms else ""
            lines.append(f"  {label:<58} {value * 1000 / n:7.3f} ms profiled {share:6.1%}{real}")
    return "\n".join(lines) + "\n"


def profile(
    client: InProcess,
    case: Case,
    *,
    n: int,
    top: int,
    out_dir: Path | None,
    label: str,
    timer: str,
    cpu_ms: float | None = None,
) -> str:
    case.run(client, max(5, n // 10))
    # cpu: what the process computes, whatever else runs on the machine; wall: also the waits on Postgres/Redis
    profiler = cProfile.Profile(time.process_time) if timer == "cpu" else cProfile.Profile()
    profiler.enable()
    case.run(client, n)
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    text.write(f"=== {case.name}: {n} requests under cProfile ({timer} time) ===\n")
    text.write("where the time goes (cumulative; indented rows are part of the row above):\n")
    text.write(breakdown(stats, n=n, cpu_ms=cpu_ms))
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    out = text.getvalue()
    prefixes = {p.rstrip("/") + "/" for p in sys.path if p.endswith("site-packages")}
    prefixes |= {sysconfig.get_path("stdlib") + "/", str(common.ROOT) + "/"}
    for prefix in sorted(prefixes, key=len, reverse=True):
        out = out.replace(prefix, "")  # paths as package/module.py
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        stats.dump_stats(out_dir / f"{label}.prof")
        (out_dir / f"{label}.txt").write_text(out)
    return out


# --- the run -----------------------------------------------------------------------------------------


@dataclass
class Phase:
    requests: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    served: int = 0  # warm-up included: what the server's CPU was spent on
    web_cpu_s: float = 0.0
    db_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    rounds: list[float] = field(default_factory=list)  # req/s of each round

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _loaded_phases(args, all_cases, *, token: str, report: common.Report) -> dict[str, Phase]:
    database = os.environ["DATABASE_URL"].rsplit("/", 1)[1].split("?")[0]
    web_workers = args.web_workers or 2 * (os.cpu_count() or 1) + 1
    processes, threads = args.clients
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json", "Accept": "application/json"}
    order = ("anchor POST", "POST /api/ai/jobs", "anchor GET", "GET /api/ai/jobs/{id}")
    phases = {name: Phase() for name in order}
    plans = {}
    for name in order:
        case = all_cases[name]
        plans[name] = [(case.method, path, case.body or None) for path in case.paths]
        if case.method == "POST":  # a different prompt per request, as real clients send
            bodies = [json.dumps({**BODY, "prompt": f"{BODY['prompt']}, variant {i}"}) for i in range(100)]
            plans[name] = [(case.method, case.paths[0], b.encode()) for b in bodies]
    log = common.log_file("api-gunicorn")
    anchor_id = int(all_cases["anchor GET"].paths[0].rsplit("/", 1)[1])
    proc, port = start_gunicorn(workers=web_workers, log=log, anchor_id=anchor_id)
    try:
        for name in order:  # what each worker does once (imports on first use, caches): not measured
            loadgen.run(
                host="127.0.0.1",
                port=port,
                plan=plans[name],
                headers=headers,
                processes=processes,
                threads=threads,
                seconds=1.0,
                warmup=0.0,
            )
        for _ in range(args.rounds):
            for name in order:
                plan = plans[name]
                before = cpu_sample(proc.pid, database)
                r = loadgen.run(
                    host="127.0.0.1",
                    port=port,
                    plan=plan,
                    headers=headers,
                    processes=processes,
                    threads=threads,
                    seconds=args.seconds,
                    warmup=1.0,  # the workers are warm (above): a second for the clients' connections
                )
                web, db = cpu_spent(before, cpu_sample(proc.pid, database))
                p = phases[name]
                p.requests += r.requests
                p.seconds += r.seconds
                p.latencies_ms += r.latencies_ms
                p.errors += r.errors
                p.samples += r.samples[: max(0, 3 - len(p.samples))]
                for k, v in r.statuses.items():
                    p.statuses[k] = p.statuses.get(k, 0) + v
                p.served += r.requests + r.warmup_requests
                p.web_cpu_s += web
                p.db_cpu_s += db
                p.client_cpu_s += r.client_cpu_s
                p.rounds.append(r.requests / r.seconds)
                print(f"    {name}: {r.requests / r.seconds:.0f} req/s (load {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        common.stop(proc)
    anchor_post, anchor_get = phases["anchor POST"], phases["anchor GET"]
    for name in order:
        p = phases[name]
        p50, p99 = common.percentile(p.latencies_ms, 0.5), common.percentile(p.latencies_ms, 0.99)
        ours_post, ours_get = name == "POST /api/ai/jobs", name == "GET /api/ai/jobs/{id}"
        value = f"{p.rps:.0f} req/s ({p.requests} requests; rounds {', '.join(f'{x:.0f}' for x in p.rounds)})"
        if ours_post or ours_get:
            # each round's rate against the anchor's of the same round (seconds apart): the median of those
            # ratios is the figure; the machine's other load moves both sides of a round alike
            ratios = [x / a for x, a in zip(p.rounds, anchor_post.rounds, strict=True) if a]
            ratio = statistics.median(ratios) if ratios else float("nan")
            value += (
                f"; {ratio:.0%} of the anchor's POST rate (median of the rounds: "
                f"{', '.join(f'{x:.0%}' for x in ratios)}; pooled {p.rps / anchor_post.rps:.0%})"
            )
            if ours_get and anchor_get.rps:
                value += f", {p.rps / anchor_get.rps:.0%} of its GET rate (pooled)"
            target = TARGET_POST_RATIO if ours_post else TARGET_GET_RATIO
            report.figure(
                f"{name}: throughput", value, f">= {target:.0%} of the anchor POST", common.meets(ratio, target)
            )
        else:
            report.figure(f"{name}: throughput", value)
        report.figure(
            f"{name}: latency",
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
            f"p99 <= {TARGET_P99_MS:.0f} ms" if ours_post else "",
            common.meets(p99, TARGET_P99_MS, higher_is_better=False) if ours_post else None,
        )
        report.figure(
            f"{name}: errors",
            f"{p.errors} ({', '.join(f'{k}: {v}' for k, v in sorted(p.statuses.items()))})"
            + (f"; e.g. {p.samples[0]}" if p.samples else ""),
        )
        web_ms, db_ms = p.web_cpu_s * 1000 / max(1, p.served), p.db_cpu_s * 1000 / max(1, p.served)
        cpu = f"{web_ms:.2f} ms gunicorn workers + {db_ms:.2f} ms Postgres backends = {web_ms + db_ms:.2f} ms"
        if ours_post or ours_get:
            anchor_ms = (anchor_post.web_cpu_s + anchor_post.db_cpu_s) * 1000 / max(1, anchor_post.served)
            cpu += f" (the anchor POST's {anchor_ms:.2f} ms is {anchor_ms / (web_ms + db_ms):.0%} of it)"
        cpu += f"; load generator {p.client_cpu_s / max(p.seconds, 1e-9) * 100:.0f} % of one core"
        report.figure(f"{name}: server CPU per request", cpu)
    return phases


def main(argv=None) -> dict:
    def extra(parser):
        parser.add_argument("--seconds", type=float, default=None, help="per phase (default 5, quick 3)")
        parser.add_argument("--rounds", type=int, default=None, help="rounds of the four phases (default 5, quick 1)")
        parser.add_argument("--web-workers", type=int, default=None, help="gunicorn workers (default 2 x cores + 1)")
        parser.add_argument("--clients", type=int, nargs=2, default=(2, 8), metavar=("PROCESSES", "THREADS"))
        parser.add_argument("--profile", type=int, default=0, metavar="N", help="profile mode: N of each, no gunicorn")
        parser.add_argument("--top", type=int, default=30, help="profile entries printed per ordering")
        parser.add_argument(
            "--profile-timer", choices=("cpu", "wall"), default="cpu", help="cpu (default): robust to load"
        )
        parser.add_argument("--profile-out", type=Path, default=None, metavar="DIR", help="save the profiles here")

    args = common.parse_args(__doc__.splitlines()[0], argv, extra)
    args.seconds = args.seconds or (3.0 if args.quick else 5.0)
    args.rounds = args.rounds or (1 if args.quick else 5)
    os.environ["AI_SUBMIT_THROTTLE_RATE"] = "1000000/min"  # here and in gunicorn: measure the API, not the throttle
    common.configure_env()
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS_MODULE
    os.environ["DJANGO_ALLOWED_HOSTS"] = "127.0.0.1,localhost"
    # this process writes its metrics as a gunicorn worker does (configure_env unset it; gunicorn gets its own)
    inproc_metrics = common.scratch_dir("metrics-api-inprocess")
    for f in inproc_metrics.glob("*.db"):
        f.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(inproc_metrics)
    import django

    django.setup()
    from rest_framework.authtoken.models import Token

    from bench import anchor
    from jobs.submission import job_submit

    mode = (
        f"profile mode, {args.profile} of each in-process"
        if args.profile
        else (
            f"gunicorn, {args.web_workers or 2 * (os.cpu_count() or 1) + 1} sync workers; "
            f"{args.clients[0]}x{args.clients[1]} closed-loop clients, {args.rounds} x {args.seconds:.0f} s per phase"
        )
    )
    report = common.Report(f"4. API against the trivial-view anchor ({mode})", quick=args.quick)
    common.reset_state()
    anchor.ensure_table()
    user = common.bench_user()
    token, _ = Token.objects.get_or_create(user=user)
    job_ids = [
        str(job_submit(owner=user, prompt=f"An existing page {i}", provider="simulated", model="sim-small")[0].id)
        for i in range(1000)
    ]
    anchor_ids = [anchor.AnchorRow.objects.create(note=f"row {i}").id for i in range(1000)]
    tried_ids = job_ids[-50:]
    give_one_attempt(tried_ids)
    all_cases = cases(job_ids[:-50], anchor_ids, tried_ids)
    from django.db import connections

    connections.close_all()

    results: dict = {}
    if not args.profile:
        phases = _loaded_phases(args, all_cases, token=token.key, report=report)
        results = {name: {"rps": p.rps, "requests": p.requests, "errors": p.errors} for name, p in phases.items()}

    client = InProcess(token.key)
    counts = per_request_counts(client, all_cases)
    for name, per in counts.items():
        report.figure(f"per request, {name}", counting.describe(per))
    n_cpu = args.profile or (100 if args.quick else 300)
    cpu = cpu_per_request(client, all_cases, n=n_cpu)
    report.figure(
        "CPU per request in one process (no profiler; Django + DRF + ours + client libraries)",
        ", ".join(f"{name} {ms:.2f} ms" for name, ms in cpu.items()),
    )
    if args.profile:
        for label, name in (("post", "POST /api/ai/jobs"), ("get", "GET /api/ai/jobs/{id}")):
            text = profile(
                client,
                all_cases[name],
                n=args.profile,
                top=args.top,
                out_dir=args.profile_out,
                label=label,
                timer=args.profile_timer,
                cpu_ms=cpu.get(name),
            )
            print(text)
        if args.profile_out:
            report.note(f"profiles saved in {args.profile_out}")
    if not args.no_save:
        report.save()
    return {"load": results, "counts": counts, "cpu_ms": cpu}


if __name__ == "__main__":
    main()
