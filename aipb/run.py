"""`make run`: web (gunicorn) + a worker pool (with RQ's scheduler) + periodic reconcile + the schedules'
scheduler + the workers' metrics server, on loopback, as one process group stopped together. These are the
standard processes; a deployment runs the same commands under its own supervisor (README.md, "Production").

    python -m aipb.run [start]   run in the foreground until SIGINT (Ctrl-C), SIGTERM or SIGHUP
    python -m aipb.run check     exit 1, saying why, if one already runs here or its ports are taken
    python -m aipb.run stop      stop the one running here (`make stop`) and wait until it has

Stopping works the same whichever of the three signals comes, to this process alone (`make stop`) or
to the whole group (Ctrl-C, a closed terminal, `kill -- -PGID`): this process sends each app process
SIGTERM, a warm stop (a busy worker finishes its job). The group's own signal may reach them first;
where it would cut them short (SIGHUP, or SIGINT to a program without a handler) they start with it
ignored, and RQ takes a second stop request within a second as the same one. Whatever is left after
the stop timeout, or at a second Ctrl-C, is killed, orphans included. Then, in embedded mode, the
embedded Postgres and Redis are stopped too.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from aipb import embedded
from aipb.env import env_float, env_int, env_str
from aipb.queue_names import AI_QUEUES, WEBHOOK_QUEUE
from aipb.run_lock import PID_FILE, AlreadyRunning, lock_holder, port_problem, running_message, take_lock

THREADED_WORKER = "jobs.threaded_worker.AIPBThreadedWorker"

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
POLL_SECONDS = 0.1

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


@dataclass(frozen=True)
class Config:
    bind: str
    metrics_bind: str
    web_workers: int
    worker_processes: int
    worker_env: tuple[tuple[str, str], ...]  # the threaded worker's threads per process and its connection pool
    stop_timeout: float
    metrics_dir: Path

    @classmethod
    def from_env(cls) -> Config:
        concurrency = env_int("AI_WORKER_CONCURRENCY", 10, minimum=1)
        threaded = env_str("AI_WORKER_CLASS", THREADED_WORKER) == THREADED_WORKER
        # threaded: a few processes (one per core by default) whose threads add up to the concurrency;
        # the one-job-at-a-time classes need a process per in-flight attempt
        processes = min(env_int("AI_WORKER_PROCESSES", os.cpu_count() or 1, minimum=1), concurrency)
        if not threaded:
            processes = concurrency
        return cls(
            bind=env_str("AIPB_BIND", "127.0.0.1:8000"),
            metrics_bind=env_str("AIPB_METRICS_BIND", "127.0.0.1:9108"),
            web_workers=env_int("WEB_CONCURRENCY", 2, minimum=1),
            worker_processes=processes,
            worker_env=_threads_and_pool(-(-concurrency // processes)) if threaded else (),
            # a busy worker finishes its provider call before it exits (warm shutdown)
            stop_timeout=env_float("AI_PROVIDER_TIMEOUT_SECONDS", 60.0, minimum=0.1) + 15,
            metrics_dir=Path(env_str("PROMETHEUS_MULTIPROC_DIR") or embedded.VAR_DIR / "metrics"),
        )


def _threads_and_pool(threads: int) -> tuple[tuple[str, str], ...]:
    # A pooled Postgres connection per two threads at most: an attempt holds one only for its short
    # transactions, never during the provider call (README, "Capacity"). The operator's own size wins.
    pool = os.environ.get("DATABASE_POOL_MAX_SIZE") or str(max(2, -(-threads // 2)))
    return (("AI_WORKER_THREADS", str(threads)), ("DATABASE_POOL_MAX_SIZE", pool))


@dataclass(frozen=True)
class Child:
    name: str
    argv: list[str]
    metrics: str  # subdirectory of Config.metrics_dir this process writes its metrics to
    env: tuple[tuple[str, str], ...] = ()  # added to this process's environment
    # Signals to the whole group that would cut this program short instead of our SIGTERM: ignored from
    # the start (an ignored signal stays ignored across exec unless the program installs a handler).
    # gunicorn and RQ install their own SIGINT handlers, which stop them properly.
    ignore: tuple[signal.Signals, ...] = ()


def _children(config: Config) -> list[Child]:
    python = sys.executable
    metrics_host, _, metrics_port = config.metrics_bind.rpartition(":")
    return [
        Child(
            "web",
            [python, "-m", "gunicorn", "aipb.wsgi", "--bind", config.bind, "--workers", str(config.web_workers)]
            + ["--config", "python:aipb.gunicorn_conf"],
            metrics="web",
        ),
        Child(
            "workers",
            # webhook deliveries first: each is short (a capped timeout, retries spaced out), and at saturation
            # the AI queues are never empty, so a queue drained after them would never be sent
            [python, "manage.py", "rqworker-pool", WEBHOOK_QUEUE, *AI_QUEUES.values()]
            + ["--num-workers", str(config.worker_processes)],
            metrics="workers",
            env=config.worker_env,
            ignore=(signal.SIGHUP,),  # RQ has no SIGHUP handler: it would kill busy workers mid-job
        ),
        Child(
            "reconcile",
            [python, "manage.py", "reconcile", "--every", "60"],
            metrics="workers",
            ignore=(signal.SIGINT, signal.SIGHUP),
        ),
        # Fires due schedules; more than one (here or on other hosts) fire each instant once (schedules.firing).
        Child(
            "scheduler",
            [python, "manage.py", "schedules", "run"],
            metrics="workers",
            ignore=(signal.SIGHUP,),  # it stops on SIGTERM and SIGINT after the tick in hand
        ),
        # Health probes of every configured provider target (jobs.routing.health): a tiny request each, every
        # 5 minutes, for ai_provider_probe_success and the providers API.
        Child(
            "probes",
            [python, "manage.py", "providers", "probe", "--every", "300"],
            metrics="workers",
            ignore=(signal.SIGINT, signal.SIGHUP),
        ),
        # The workers' own metrics (web's and theirs live in separate directories, so Prometheus scraping
        # both targets of monitoring/config/prometheus.yml counts nothing twice).
        Child(
            "metrics",
            [python, "manage.py", "metrics_server", "--bind", metrics_host.strip("[]"), "--port", metrics_port],
            metrics="workers",
            ignore=(signal.SIGINT, signal.SIGHUP),
        ),
    ]


def check(config: Config) -> str | None:
    """Why a run cannot start here now, or None."""
    holder = lock_holder()
    if holder is not None:
        return running_message(holder)
    problems = [
        p
        for p in (
            port_problem(config.bind, "web, AIPB_BIND"),
            port_problem(config.metrics_bind, "metrics, AIPB_METRICS_BIND"),
        )
        if p
    ]
    return "; ".join(problems) or None


# --- the processes ------------------------------------------------------------------------------------


def _prctl(option: int, value: int) -> None:
    if _LIBC is not None:
        _LIBC.prctl(option, value, 0, 0, 0)


def _start(child: Child, config: Config) -> subprocess.Popen:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(config.metrics_dir / child.metrics), **dict(child.env)}

    def before_exec() -> None:  # in the child, between fork and exec; this process has no threads
        for sig in child.ignore:
            signal.signal(sig, signal.SIG_IGN)
        # if this supervisor is killed outright (SIGKILL), its children still get their SIGTERM
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    # Same process group as this process (no new session): a signal to the group reaches every process.
    return subprocess.Popen(child.argv, env=env, preexec_fn=before_exec)


def _descendants() -> list[int]:
    """Every live process below this one (orphans included: this process is their subreaper)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # comm may hold spaces and parentheses
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [os.getpid()]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.stop_requested_at: float | None = None
        self.force = False

    def on_signal(self, signum: int, _frame) -> None:
        now = time.monotonic()
        if self.stop_requested_at is None:
            self.stop_requested_at = now
            _say(f"\n{signal.Signals(signum).name}: stopping aipb ...", err=True)
        elif signum == signal.SIGINT and now - self.stop_requested_at > 1:
            # a second Ctrl-C; the same signal within a second is one request delivered twice (make
            # forwards its SIGTERM to us, and a group signal reaches us and make both)
            self.force = True

    def alive(self) -> list[tuple[str, subprocess.Popen]]:
        return [(name, proc) for name, proc in self.procs if proc.poll() is None]

    def run(self) -> int:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.on_signal)
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        for sub in ("web", "workers"):
            # prometheus_client's multiprocess files are per pid: a previous run's would add to this one's
            shutil.rmtree(self.config.metrics_dir / sub, ignore_errors=True)
            (self.config.metrics_dir / sub).mkdir(parents=True)
        for child in _children(self.config):
            if self.stop_requested_at is None:
                self.procs.append((child.name, _start(child, self.config)))
        _say(_banner(self.config))

        status = 0
        while self.stop_requested_at is None:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    _say(f"{name} exited with {proc.returncode}; stopping the rest", err=True)
                    status = proc.returncode or 1
                    self.stop_requested_at = time.monotonic()
                    break
            time.sleep(POLL_SECONDS)
        return self.stop() or status

    def stop(self) -> int:
        for _, proc in self.alive():
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.stop_timeout
        while self.alive() and not self.force and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        status = 0
        if self.alive():
            names = ", ".join(name for name, _ in self.alive())
            why = "second Ctrl-C" if self.force else f"still running after {self.config.stop_timeout:g}s"
            _say(f"{why}: killing {names}", err=True)
            status = 1
        # whatever is left, orphans included: a worker whose pool died, a work-horse, a gunicorn worker
        for pid in _descendants() if sys.platform == "linux" else [p.pid for _, p in self.alive()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _, proc in self.procs:
            proc.wait()
        _reap()
        return status


def _say(message: str, *, err: bool = False) -> None:
    """Print for the person at the terminal, who may be gone: after a hangup (SIGHUP) writes to the
    terminal fail, and the stop must go on, embedded servers included, without anyone to tell."""
    try:
        print(message, file=sys.stderr if err else sys.stdout, flush=True)
    except OSError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.dup2(devnull, sys.stderr.fileno())
        os.close(devnull)


def _banner(config: Config) -> str:
    base = f"http://{config.bind}"
    return (
        f"\naipb is running (pid {os.getpid()}):\n"
        f"  API        {base}/api/ai/jobs\n"
        f"  API docs   {base}/api/docs/  and  {base}/api/redoc/\n"
        f"  admin      {base}/admin/\n"
        f"  metrics    {base}/metrics (web)  and  http://{config.metrics_bind}/metrics (workers)\n"
        "Ctrl-C or `make stop` stops everything.\n"
    )


def start(config: Config) -> int:
    problem = port_problem(config.bind, "web, AIPB_BIND") or port_problem(
        config.metrics_bind, "metrics, AIPB_METRICS_BIND"
    )
    try:
        lock = take_lock(bind=config.bind)
    except AlreadyRunning as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        if problem:
            print(f"aipb cannot start: {problem}", file=sys.stderr)
            return 1
        status = Supervisor(config).run()
        if embedded.selected():
            embedded.down()
            _say("embedded Postgres and Redis stopped")
        _say("stopped")
        return status
    finally:
        PID_FILE.unlink(missing_ok=True)
        os.close(lock)


def stop(config: Config) -> int:
    holder = lock_holder()
    if holder is None:
        print("aipb is not running here")
        return 0
    pid = holder.get("pid")
    if not isinstance(pid, int):
        print(f"aipb is running but {PID_FILE} names no pid; stop it with Ctrl-C in its terminal", file=sys.stderr)
        return 1
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + config.stop_timeout + 30
    while lock_holder() is not None:
        if time.monotonic() > deadline:
            print(f"aipb (pid {pid}) is still stopping; see its terminal", file=sys.stderr)
            return 1
        time.sleep(POLL_SECONDS)
    print(f"aipb (pid {pid}) stopped")
    return 0


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "start"
    try:
        config = Config.from_env()
    except ImproperlyConfigured as exc:
        print(f"aipb: {exc}", file=sys.stderr)
        return 2
    if command == "start":
        return start(config)
    if command == "check":
        problem = check(config)
        if problem:
            print(problem, file=sys.stderr)
            return 1
        return 0
    if command == "stop":
        return stop(config)
    print(f"usage: python -m aipb.run [start|check|stop] (got {command!r})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
