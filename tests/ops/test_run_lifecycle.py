"""e2e: `make run`'s process tree (aipb/run.py) started for real and stopped every way an operator stops it:
Ctrl-C (SIGINT to the group), SIGTERM to the group, a closed terminal (SIGHUP, and writes to the terminal
failing), `make stop`; in embedded mode the embedded Postgres and Redis go too. A second run while one
runs, and a run whose port another program holds, are refused with a reason.

Each run gets free ports and a var dir of its own (AIPB_VAR_DIR: pid file, metrics, static files), so
it never meets a `make run` of the person running the tests.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from rq import Worker

from aipb import embedded
from tests.ops.conftest import BASE_DIR, child_env, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PYTHON = sys.executable
# the Makefile's targets as they are, but never `install`: a test must not reinstall the venv it runs in
MAKE = ["make", "--no-print-directory", "-o", "install"]
STOP_WITHIN = 10.0  # seconds, idle; ~2 s measured on 2 busy cores (it was ~29 s before)
WORKERS = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _proc_stat(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()  # state ppid pgrp ...; comm may hold spaces


def alive(pid: int) -> bool:
    fields = _proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class AppRun:
    """`python -m aipb.run` in a process group of its own, as a terminal gives `make run` one."""

    def __init__(self, env: dict[str, str], log_path: Path, *, terminal: int | None = None) -> None:
        self.env = env
        self.log_path = log_path
        self.web = f"http://{env['AIPB_BIND']}"
        self.metrics = f"http://{env['AIPB_METRICS_BIND']}/metrics"
        self._log = None if terminal is not None else open(log_path, "w")  # noqa: SIM115 - closed in close()
        out = terminal if terminal is not None else self._log
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "aipb.run"],
            cwd=BASE_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        self.pgid = self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def processes(self) -> dict[int, str]:
        """Every live process of the run: its group, and anything below it that left the group."""
        stats = {int(p.name): _proc_stat(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
        stats = {pid: fields for pid, fields in stats.items() if fields and fields[0] != "Z"}
        found = {pid for pid, fields in stats.items() if int(fields[2]) == self.pgid}
        frontier = list(found)
        while frontier:
            parent = frontier.pop()
            kids = [pid for pid, fields in stats.items() if int(fields[1]) == parent and pid not in found]
            found.update(kids)
            frontier += kids
        return {pid: cmdline(pid) for pid in found}

    def redis(self) -> redis.Redis:
        url = self.env.get("REDIS_URL") or embedded.read_env_file().get("REDIS_URL")
        return redis.Redis.from_url(url)

    def wait_ready(self) -> dict[int, str]:
        """Until the web app and the metrics server answer and the pool's workers are registered (idle)."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"aipb.run exited with {self.proc.returncode}:\n{self.log()}")
            try:
                for url in (f"{self.web}/api/version", self.metrics):
                    with urllib.request.urlopen(url, timeout=5) as response:
                        assert response.status == 200
            except OSError:
                return False
            pids = self.processes()
            return len([w for w in Worker.all(connection=self.redis()) if w.pid in pids]) == WORKERS

        wait_for(ready, timeout=90, interval=0.3, what="aipb.run to be up")
        procs = self.processes()
        kinds = list(procs.values())
        assert len([c for c in kinds if "gunicorn aipb.wsgi" in c]) >= 2, procs  # master + worker
        assert len([c for c in kinds if "rqworker-pool" in c]) >= 1 + WORKERS, procs
        assert len([c for c in kinds if "manage.py reconcile" in c]) == 1, procs
        assert len([c for c in kinds if "manage.py schedules run" in c]) == 1, procs
        assert len([c for c in kinds if "manage.py metrics_server" in c]) == 1, procs
        return procs

    def wait_gone(self, pids: list[int], timeout: float = STOP_WITHIN) -> float:
        """Seconds until none of ``pids`` and nothing of the group is left."""
        started = time.monotonic()

        def gone() -> bool:
            return not any(alive(pid) for pid in pids) and not self.processes()

        try:
            wait_for(gone, timeout=timeout, interval=0.05, what="every process of the run to exit")
        except AssertionError:
            left = {pid: cmdline(pid) for pid in pids if alive(pid)} | self.processes()
            raise AssertionError(f"still running after {timeout}s: {left}\n{self.log()}") from None
        return time.monotonic() - started

    def close(self) -> None:
        """Whatever a failed test left: the group and anything below it."""
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if self._log:
            self._log.close()


@pytest.fixture
def run_env(redis_conn, tmp_path):
    """The environment of one run against the test database and the test Redis database."""
    return child_env(
        AIPB_VAR_DIR=str(tmp_path / "var"),
        AIPB_BIND=f"127.0.0.1:{free_port()}",
        AIPB_METRICS_BIND=f"127.0.0.1:{free_port()}",
        AI_WORKER_CONCURRENCY=str(WORKERS),
        WEB_CONCURRENCY="1",
    )


@pytest.fixture
def start_run(tmp_path):
    runs: list[AppRun] = []

    def start(env: dict[str, str], **kwargs) -> AppRun:
        run = AppRun(env, tmp_path / f"run-{len(runs)}.log", **kwargs)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()


def pid_file(env: dict[str, str]) -> Path:
    return Path(env["AIPB_VAR_DIR"]) / "run.pid"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_to_the_group_stops_every_process_within_seconds(run_env, start_run, sig):
    run = start_run(run_env)
    procs = run.wait_ready()
    assert pid_file(run_env).exists()

    os.killpg(run.pgid, sig)
    run.wait_gone(list(procs))
    assert run.proc.wait(timeout=5) == 0, run.log()
    assert run.log().rstrip().endswith("stopped")
    assert "Traceback" not in run.log()
    assert not pid_file(run_env).exists()


def test_a_closed_terminal_stops_every_process(run_env, start_run):
    """SIGHUP with the terminal gone: writing to it fails (EIO), and the stop must not stop there."""
    master, slave = os.openpty()
    stop_reading = threading.Event()

    def drain() -> None:  # a terminal that nobody reads fills up and blocks the writers
        while not stop_reading.is_set():
            if select.select([master], [], [], 0.1)[0]:
                os.read(master, 1 << 16)
        os.close(master)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        run = start_run(run_env, terminal=slave)
        os.close(slave)
        procs = run.wait_ready()
    finally:
        stop_reading.set()
        reader.join()

    os.killpg(run.pgid, signal.SIGHUP)
    run.wait_gone(list(procs))
    assert run.proc.wait(timeout=5) == 0
    assert not pid_file(run_env).exists()


def test_make_stop_stops_the_app_processes(run_env, start_run):
    run = start_run(run_env)
    procs = run.wait_ready()

    started = time.monotonic()
    done = subprocess.run(MAKE + ["stop"], cwd=BASE_DIR, env=run_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"aipb (pid {run.proc.pid}) stopped" in done.stdout
    # `make stop` returns once the run is gone, not before
    assert not [pid for pid in procs if alive(pid)], [cmdline(pid) for pid in procs if alive(pid)]
    assert time.monotonic() - started < STOP_WITHIN + 5
    assert run.proc.wait(timeout=5) == 0

    again = subprocess.run(MAKE + ["stop"], cwd=BASE_DIR, env=run_env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "aipb is not running here" in again.stdout


def test_a_second_run_is_refused_while_one_runs_and_the_first_keeps_running(run_env, start_run):
    first = start_run(run_env)
    procs = first.wait_ready()

    for argv in ([PYTHON, "-m", "aipb.run"], [PYTHON, "-m", "aipb.run", "check"], MAKE + ["run"]):
        done = subprocess.run(argv, cwd=BASE_DIR, env=run_env, capture_output=True, text=True, timeout=120)
        assert done.returncode != 0, argv
        assert f"aipb is already running here (pid {first.proc.pid} at {first.web}/" in done.stderr, argv
        assert "migrate" not in done.stdout  # `make run` stops before touching anything
    assert first.processes().keys() >= procs.keys()  # nothing of the first run was touched
    with urllib.request.urlopen(f"{first.web}/api/version", timeout=5) as response:
        assert response.status == 200

    os.killpg(first.pgid, signal.SIGTERM)
    first.wait_gone(list(procs))
    done = subprocess.run([PYTHON, "-m", "aipb.run", "check"], cwd=BASE_DIR, env=run_env, capture_output=True)
    assert done.returncode == 0, done.stderr


def test_a_port_held_by_another_program_is_refused_with_its_name(run_env, start_run):
    host, port = run_env["AIPB_BIND"].split(":")
    with socket.socket() as holder:
        holder.bind((host, int(port)))
        holder.listen()
        run = start_run(run_env)
        assert run.proc.wait(timeout=30) == 1
    assert f"aipb cannot start: {run_env['AIPB_BIND']} (web, AIPB_BIND) is in use by another program" in run.log()
    assert "gunicorn" not in run.log() and not pid_file(run_env).exists()


@pytest.fixture
def embedded_env(redis_conn):
    """A private embedded Postgres and Redis (`make run` with DATABASE_URL and REDIS_URL unset), migrated."""
    var = Path(tempfile.mkdtemp(prefix="aipb-run-", dir="/tmp"))  # short: unix socket paths are limited
    env = child_env(
        AIPB_VAR_DIR=str(var),
        AIPB_BIND=f"127.0.0.1:{free_port()}",
        AIPB_METRICS_BIND=f"127.0.0.1:{free_port()}",
        AI_WORKER_CONCURRENCY=str(WORKERS),
        WEB_CONCURRENCY="1",
    )
    del env["DATABASE_URL"], env["REDIS_URL"]
    try:
        yield env
    finally:
        subprocess.run([PYTHON, "-m", "aipb.embedded", "down"], cwd=BASE_DIR, env=env, capture_output=True)
        shutil.rmtree(var, ignore_errors=True)


def embedded_up(env: dict[str, str]) -> list[int]:
    """Start the embedded servers and migrate, as `make run` does first; their pids."""
    for argv in ([PYTHON, "-m", "aipb.embedded", "up"], [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"]):
        done = subprocess.run(argv, cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    var = Path(env["AIPB_VAR_DIR"])
    pids = [int((var / "pgdata" / "postmaster.pid").read_text().split()[0])]
    pids.append(int((var / "redis" / "redis.pid").read_text().split()[0]))
    assert all(alive(pid) for pid in pids)
    return pids


def test_embedded_servers_stop_with_the_app_on_sigterm_and_on_make_stop(embedded_env, start_run, monkeypatch):
    # the test process reads the embedded servers' URLs (for the workers' registrations) from this var dir
    monkeypatch.setattr(embedded, "ENV_FILE", Path(embedded_env["AIPB_VAR_DIR"]) / "embedded.env")

    servers = embedded_up(embedded_env)
    run = start_run(embedded_env)
    procs = run.wait_ready()
    os.killpg(run.pgid, signal.SIGTERM)
    run.wait_gone([*procs, *servers], timeout=STOP_WITHIN + 10)  # + pg_ctl's fast shutdown
    assert run.proc.wait(timeout=5) == 0
    assert "embedded Postgres and Redis stopped" in run.log()

    servers = embedded_up(embedded_env)
    run = start_run(embedded_env)
    procs = run.wait_ready()
    done = subprocess.run(MAKE + ["stop"], cwd=BASE_DIR, env=embedded_env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not [pid for pid in [*procs, *servers] if alive(pid)]
