"""`make run`: web (gunicorn) + a worker pool (with RQ's scheduler) + periodic reconcile,
on loopback, stopped together on Ctrl-C. These are the standard processes; a deployment
runs the same commands under its own supervisor (README.md, "Production").

    python -m aipb.run
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from aipb.env import env_int, env_str


def _commands() -> list[tuple[str, list[str]]]:
    python = sys.executable
    bind = env_str("AIPB_BIND", "127.0.0.1:8000")
    concurrency = env_int("AI_WORKER_CONCURRENCY", 10, minimum=1)
    web_workers = env_int("WEB_CONCURRENCY", 2, minimum=1)
    return [
        (
            "web",
            [
                python,
                "-m",
                "gunicorn",
                "aipb.wsgi",
                "--bind",
                bind,
                "--workers",
                str(web_workers),
                "--config",
                "python:aipb.gunicorn_conf",
            ],
        ),
        (
            "workers",
            [
                python,
                "manage.py",
                "rqworker-pool",
                "ai-high",
                "ai-default",
                "ai-low",
                "--num-workers",
                str(concurrency),
            ],
        ),
        ("reconcile", [python, "manage.py", "reconcile", "--every", "60"]),
    ]


def main() -> int:
    procs: list[tuple[str, subprocess.Popen]] = []
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for name, cmd in _commands():
        procs.append((name, subprocess.Popen(cmd, start_new_session=True)))
    bind = env_str("AIPB_BIND", "127.0.0.1:8000")
    print(
        f"\naipb is running:\n  API       http://{bind}/api/ai/jobs\n  API docs  http://{bind}/api/docs/\n"
        f"  admin     http://{bind}/admin/\n  metrics   http://{bind}/metrics\nCtrl-C stops everything.\n",
        flush=True,
    )
    status = 0
    while not stopping:
        for name, proc in procs:
            if proc.poll() is not None:
                print(f"{name} exited with {proc.returncode}; stopping the rest", file=sys.stderr)
                status = proc.returncode or 1
                stopping = True
        time.sleep(0.5)
    for _, proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for _, proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    print("stopped", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
