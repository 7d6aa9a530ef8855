"""`make run`'s one-instance lock and port checks (aipb.run): one run per var dir, its pid file naming it."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time

from aipb import embedded

PID_FILE = embedded.VAR_DIR / "run.pid"


class AlreadyRunning(Exception):
    pass


def read_pid_file() -> dict:
    try:
        return json.loads(PID_FILE.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def running_message(info: dict) -> str:
    pid = info.get("pid", "?")
    where = f" at http://{info['bind']}/" if info.get("bind") else ""
    return (
        f"aipb is already running here (pid {pid}{where}, var dir {embedded.VAR_DIR}). "
        "Stop it with `make stop` (or Ctrl-C in its terminal), or use that one."
    )


def take_lock(*, bind: str) -> int:
    """Take the run lock or raise AlreadyRunning. The kernel drops the lock when this process dies,
    however it dies, so a stale pid file never blocks the next run."""
    PID_FILE.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(PID_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(running_message(read_pid_file())) from None
    info = {"pid": os.getpid(), "pgid": os.getpgrp(), "bind": bind, "started": time.time()}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    return fd


def lock_holder() -> dict | None:
    """The pid file's contents while a run holds the lock, else None."""
    try:
        fd = os.open(PID_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_pid_file()
    finally:
        os.close(fd)  # also releases a lock we got
    return None


def port_problem(bind: str, what: str) -> str | None:
    if bind.startswith(("unix:", "fd://")):
        return None
    host, _, port = bind.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does: TIME_WAIT is no conflict
        try:
            sock.bind((host, int(port)))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"{bind} ({what}) is in use by another program"
            return f"cannot listen on {bind} ({what}): {exc.strerror or exc}"
        except ValueError:
            return f"{bind} ({what}) is not host:port"
    return None
