"""A small closed-loop HTTP load generator: P processes x T threads, each sending its next request as soon as
the previous one is answered, for a fixed time. Standard library only (http.client), so `make bench` needs
nothing installed; its own CPU use is reported, since on a small machine it shares the cores with the server.

Requests come from a plan: a list of (method, path, body) cycled through by every thread from its own offset.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing as mp
import resource
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Result:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0  # connection errors and non-2xx answers
    warmup_requests: int = 0  # answered during the warm-up (not in the figures; the server's CPU covers them)
    seconds: float = 0.0
    client_cpu_s: float = 0.0
    samples: list[str] = field(default_factory=list)  # a few error bodies, to say what went wrong

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)


def _thread(host, port, headers, plan, offset, stride, warmup_until, end, out: Result, lock) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    i = offset
    local = Result()
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        method, path, body = plan[i % len(plan)]
        i += stride
        t = time.perf_counter()
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            status = response.status
            if response.getheader("Connection", "").lower() == "close":
                conn.close()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            status, payload = 0, str(exc).encode()
        elapsed = (time.perf_counter() - t) * 1000
        if t < warmup_until:
            local.warmup_requests += 1
            continue
        local.latencies_ms.append(elapsed)
        local.statuses[status] = local.statuses.get(status, 0) + 1
        if not 200 <= status < 300:
            local.errors += 1
            if len(local.samples) < 3:
                local.samples.append(f"{status}: {payload[:200]!r}")
    conn.close()
    with lock:
        out.latencies_ms += local.latencies_ms
        out.errors += local.errors
        out.warmup_requests += local.warmup_requests
        out.samples += local.samples[: max(0, 3 - len(out.samples))]
        for k, v in local.statuses.items():
            out.statuses[k] = out.statuses.get(k, 0) + v


def _process(args) -> dict:
    host, port, headers, plan, threads, proc_index, processes, start_at, warmup, seconds = args
    out, lock = Result(), threading.Lock()
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    begin = time.perf_counter()
    warmup_until, end = begin + warmup, begin + warmup + seconds
    stride = threads * processes
    workers = [
        threading.Thread(
            target=_thread,
            args=(host, port, headers, plan, proc_index * threads + k, stride, warmup_until, end, out, lock),
        )
        for k in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "latencies_ms": out.latencies_ms,
        "statuses": out.statuses,
        "errors": out.errors,
        "warmup_requests": out.warmup_requests,
        "samples": out.samples,
        "cpu": usage.ru_utime + usage.ru_stime,
    }


def run(
    *,
    host: str,
    port: int,
    plan: list[tuple[str, str, bytes | None]],
    headers: dict[str, str],
    processes: int = 2,
    threads: int = 8,
    seconds: float = 20.0,
    warmup: float = 2.0,
) -> Result:
    start_at = time.time() + 0.5
    jobs = [(host, port, headers, plan, threads, p, processes, start_at, warmup, seconds) for p in range(processes)]
    ctx = mp.get_context("fork")
    with ctx.Pool(processes) as pool:
        parts = pool.map(_process, jobs)
    result = Result(seconds=seconds)
    for part in parts:
        result.latencies_ms += part["latencies_ms"]
        result.errors += part["errors"]
        result.warmup_requests += part["warmup_requests"]
        result.client_cpu_s += part["cpu"]
        result.samples += part["samples"][: max(0, 3 - len(result.samples))]
        for k, v in part["statuses"].items():
            result.statuses[int(k)] = result.statuses.get(int(k), 0) + v
    return result


def json_body(data: dict) -> bytes:
    return json.dumps(data).encode()
