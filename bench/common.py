"""Shared plumbing for the benchmarks: environment, database, machine facts, processes, RESULTS.md.

Where the benchmarks run: with DATABASE_URL / REDIS_URL set, those (the database name must contain
"bench", or be named in BENCH_ALLOW_DATABASE: the benchmarks empty its tables); with both unset,
the embedded servers under ./var/ (`make bench` starts them), in a database of their own
(``aipb_bench``) and Redis database 14, so `make run`'s data and the tests' Redis DB 15 are untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
PY = sys.executable
EMBEDDED_DB_NAME = "aipb_bench"
EMBEDDED_REDIS_DB = 14
BENCH_USERNAME = "bench"

# --- environment ---------------------------------------------------------------------------------


def _with_db_name(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def _with_redis_db(url: str, db: int) -> str:
    if url.startswith("unix://"):
        base, _, query = url.partition("?")
        query = "&".join(item for item in query.split("&") if item and not item.startswith("db="))
        return f"{base}?{query + '&' if query else ''}db={db}"
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def configure_env() -> None:
    """Settle the environment every benchmark process (and every process it starts) runs with."""
    if not os.environ.get("DATABASE_URL") and not os.environ.get("REDIS_URL"):
        sys.path.insert(0, str(ROOT))
        from aipb import embedded

        values = embedded.read_env_file()
        if not values:
            raise SystemExit(
                "bench: DATABASE_URL and REDIS_URL are unset and the embedded servers are not set up: "
                "run `make bench` (or `.venv/bin/python -m aipb.embedded up`), or set both URLs"
            )
        os.environ["DATABASE_URL"] = _with_db_name(values["DATABASE_URL"], EMBEDDED_DB_NAME)
        os.environ["REDIS_URL"] = _with_redis_db(values["REDIS_URL"], EMBEDDED_REDIS_DB)
        os.environ.setdefault("DJANGO_SECRET_KEY", values.get("DJANGO_SECRET_KEY") or "bench")
    elif not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
        raise SystemExit("bench: set both DATABASE_URL and REDIS_URL, or neither (embedded servers)")
    name = urlsplit(os.environ["DATABASE_URL"]).path.lstrip("/")
    if "bench" not in name and name != os.environ.get("BENCH_ALLOW_DATABASE"):
        raise SystemExit(
            f"bench: refusing to use database {name!r}: the benchmarks empty its tables. Use a database whose "
            f"name contains 'bench', or set BENCH_ALLOW_DATABASE={name}"
        )
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aipb.settings")
    os.environ["AI_ENABLE_SIMULATED_PROVIDER"] = "1"
    # one bench user's throughput is what is measured: no per-user caps (jobs.fairness; their costs in its tests)
    os.environ.setdefault("AI_USER_MAX_IN_FLIGHT", "0")
    os.environ.setdefault("AI_USER_MAX_QUEUED", "0")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each benchmark that wants it sets its own
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def ensure_database() -> None:
    """Create the benchmark database if it does not exist, and migrate it."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    url = os.environ["DATABASE_URL"]
    url = "postgresql://" + url.split("://", 1)[1]  # libpq knows postgresql:// and postgres://, not dj's aliases
    name = conninfo_to_dict(url).get("dbname") or urlsplit(url).path.lstrip("/")
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=os.environ, check=True)


def setup_django() -> None:
    configure_env()
    import django

    django.setup()


def reset_state() -> None:
    """Empty the tables the benchmarks fill and the RQ / aipb / cache keys of the benchmark Redis database."""
    from django.db import connection

    from aipb.redis_client import get_redis

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE usage_tokenusage, dlq_deadletter, jobs_jobattempt, jobs_aijob, jobs_batch"
            " RESTART IDENTITY CASCADE"
        )
    conn = get_redis()
    for pattern in ("rq:*", "aipb:*", "aipb-cache:*"):  # the cache: the submission throttle's counts
        batch = []
        for key in conn.scan_iter(match=pattern, count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                conn.unlink(*batch)
                batch = []
        if batch:
            conn.unlink(*batch)


def bench_user(*, staff: bool = False, username: str = BENCH_USERNAME):
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username=username, defaults={"is_staff": staff})
    if user.is_staff != staff:
        user.is_staff = staff
        user.save(update_fields=["is_staff"])
    return user


def submit_simulated(*, owner, indexes: Iterable[int], latency_ms: int = 0) -> None:
    """One simulated job per index (its prompt numbered by it) with the given latency, each through job_submit as
    the API submits it."""
    from jobs.submission import job_submit

    for i in indexes:
        job_submit(
            owner=owner,
            prompt=f"A landing page for bench shop number {i}: bikes, repairs and rentals.",
            provider="simulated",
            model="sim-small",
            options={"simulate": {"latency_ms": latency_ms}},
        )


def vacuum_analyze(*tables: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"VACUUM (ANALYZE) {table}")


# --- facts about the machine and the run ------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def git_commit() -> str:
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read-only: no index refresh
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True, env=env
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}{' (uncommitted changes)' if dirty else ''}"


def machine() -> dict:
    facts = {
        "cores": os.cpu_count() or 0,
        "memory": f"{_mem_gib():.1f} GiB",
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    try:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            facts["postgres"] = cursor.fetchone()[0].split()[0]
        from aipb.redis_client import get_redis

        facts["redis"] = get_redis().info("server").get("redis_version", "?")
    except Exception:  # facts are best effort; the figures are what matter
        pass
    return facts


# --- output --------------------------------------------------------------------------------------------


class Report:
    """One benchmark's figures: printed as they come, appended to RESULTS.md at the end."""

    def __init__(self, title: str, *, quick: bool = False) -> None:
        self.title = title
        self.quick = quick
        self.rows: list[tuple[str, str, str, str]] = []
        self.notes: list[str] = []
        self.started = datetime.now(UTC)
        self.commit = git_commit()  # worker processes import the tree as it is when they start
        self.facts = machine()
        print(f"\n=== {title}{' (quick)' if quick else ''} ===", flush=True)
        print("machine: " + ", ".join(f"{k} {v}" for k, v in self.facts.items()), flush=True)

    def figure(self, name: str, value: str, target: str = "", verdict: str | None = None) -> None:
        if verdict is None:
            verdict = ""
        self.rows.append((name, value, target, verdict))
        line = f"  {name}: {value}"
        if target:
            line += f"   (target {target}{': ' + verdict if verdict else ''})"
        print(line, flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def markdown(self) -> str:
        f = self.facts
        commit, now = self.commit, git_commit()
        if now != commit:
            commit = f"{commit}, then {now} (the tree changed during this benchmark)"
        lines = [
            f"### {self.title}{' (quick)' if self.quick else ''}",
            "",
            f"{self.started:%Y-%m-%d %H:%M} UTC · {f['cores']} cores, {f['memory']}, {f['cpu']} · "
            f"commit {commit} · Python {f['python']}, PostgreSQL {f.get('postgres', '?')}, "
            f"Redis {f.get('redis', '?')} · load average at start {f['load']}",
            "",
            "| figure | value | target | |",
            "|---|---|---|---|",
        ]
        lines += [f"| {n} | {v} | {t} | {verdict} |" for n, v, t, verdict in self.rows]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n\n"

    def save(self) -> None:
        append_results(self.markdown())


def meets(value: float, target: float, *, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "**short**"


def append_results(text: str) -> None:
    if not RESULTS.exists():
        RESULTS.write_text(
            "# Benchmark results\n\nAppended by `make bench` (bench/run_all.py) and by each "
            "`python -m bench.<name>`; newest at the bottom. Targets are issue 11's, on 2 cores.\n\n"
        )
    with RESULTS.open("a") as fh:
        fh.write(text)


def parse_args(description: str, argv: Sequence[str] | None = None, extra=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a short run (smaller sizes) to check it works")
    parser.add_argument("--no-save", action="store_true", help="print the figures, do not append to RESULTS.md")
    if extra is not None:
        extra(parser)
    return parser.parse_args(argv)


# --- numbers -------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def timed(fn, *, repeat: int, warmup: int = 2) -> list[float]:
    """Milliseconds per call over ``repeat`` calls after ``warmup`` unmeasured ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def ms_summary(samples: Sequence[float]) -> str:
    return (
        f"p50 {percentile(samples, 0.5):.1f} ms, p99 {percentile(samples, 0.99):.1f} ms, "
        f"max {max(samples):.1f} ms (n={len(samples)})"
    )


# --- processes -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(cmd: list[str], *, env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    """Start a process in its own session (so it and its children can be stopped together)."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env or dict(os.environ), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop(proc: subprocess.Popen, *, timeout: float = 20.0) -> None:
    """SIGTERM to the process group we started, then SIGKILL if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def wait_all(procs: Iterable[subprocess.Popen], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        remaining = deadline - time.monotonic()
        try:
            proc.wait(timeout=max(0.1, remaining))
        except subprocess.TimeoutExpired:
            for p in procs:
                stop(p)
            raise RuntimeError(f"{proc.args[:4]} still running after {timeout:.0f}s") from None


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
        except OSError:
            continue
    return out


def memory_kib(pid: int) -> dict[str, int]:
    """RSS and PSS (shared pages split between the processes that share them) of one process, KiB."""
    values = {"rss": 0, "pss": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                values[key.lower()] = int(rest.split()[0])
    except (OSError, ValueError):
        pass
    return values


def tree_memory_kib(pid: int) -> dict[str, int]:
    total = {"rss": 0, "pss": 0, "processes": 0}
    for p in descendants(pid):
        m = memory_kib(p)
        if m["rss"]:
            total["rss"] += m["rss"]
            total["pss"] += m["pss"]
            total["processes"] += 1
    return total


def worker_env(**overrides: str) -> dict:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def dump(obj) -> str:
    return json.dumps(obj, indent=2, default=str)


def scratch_dir(name: str) -> Path:
    """A directory under $BENCH_TMP (default: the system's temporary directory)/aipb-bench, reused by every run."""
    import tempfile

    path = Path(os.environ.get("BENCH_TMP") or tempfile.gettempdir()) / "aipb-bench" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_file(name: str) -> Path:
    """A fresh log for the processes one benchmark starts (kept after the run, for a look when something fails)."""
    path = scratch_dir("logs") / f"{name}.log"
    path.write_bytes(b"")
    return path
