"""Fixtures for the operations tests: real worker processes (`manage.py rqworker`) against the test database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import child_database_url
from tests.factories import submit_job

BASE_DIR = Path(settings.BASE_DIR)


def wait_for(predicate: Callable[[], object], *, timeout: float = 20.0, interval: float = 0.05, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def child_env(**overrides: str) -> dict[str, str]:
    """The environment a child process needs to use the test database and the test Redis database."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(
        DATABASE_URL=child_database_url(),
        REDIS_URL=settings.REDIS_URL,
        DJANGO_SECRET_KEY="test-only-secret-key",
        AI_ENABLE_SIMULATED_PROVIDER="1",
        AI_RATE_LIMIT_PER_SECOND="0",
        AI_CIRCUIT_FAILURE_THRESHOLD="0",  # as in tests/conftest.py
        AI_BACKOFF_BASE_SECONDS="0.01",
        AI_BACKOFF_MAX_SECONDS="0.05",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def manage(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run manage.py as an operator would, stdin not a terminal."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class WorkerProcess:
    """`manage.py rqworker ai-high ai-default ai-low` (not burst) in its own process group."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        with_scheduler: bool = True,
        worker_class: str = "jobs.worker.AIPBWorker",  # the forking worker: its work-horse can be killed
        worker_ttl: int = 30,  # an idle worker's heartbeat comes every worker_ttl - 15 s
        **env: str,
    ) -> None:
        self.log_path = tmp_path / f"worker-{time.monotonic_ns()}.log"
        cmd = [sys.executable, "manage.py", "rqworker", "ai-high", "ai-default", "ai-low"]
        cmd += ["--worker-ttl", str(worker_ttl), "--worker-class", worker_class]
        if with_scheduler:
            cmd.append("--with-scheduler")
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            cwd=BASE_DIR,
            env=child_env(**env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 30.0) -> None:
        from jobs.queue_control import queue_status

        def registered() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            return any(w["pid"] == self.pid for w in queue_status()["workers"])

        wait_for(registered, timeout=timeout, what="the worker to register")

    def children(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid ... ; comm may contain spaces, so split after the last ')'
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == self.pid:
                found.append(int(entry.name))
        return found

    def kill(self) -> None:
        """SIGKILL the worker and its children (a lost host): RQ puts each work-horse in a process
        group of its own, so the horse is killed by pid, not with the worker's group."""
        children = self.children()
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.kill()
        self._log.close()


@pytest.fixture
def worker_process(redis_conn, transactional_db, tmp_path):
    """Start real worker processes; each is stopped (its own process group only) after the test."""
    started: list[WorkerProcess] = []

    def start(*, ready: bool = True, **kwargs) -> WorkerProcess:
        worker = WorkerProcess(tmp_path, **kwargs)
        started.append(worker)
        if ready:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


submit = submit_job  # the operations tests (commands, admin, reconcile) import it by this name


def sim(**simulate) -> dict:
    return {"provider": "simulated", "model": "sim-small", "options": {"simulate": simulate}}
