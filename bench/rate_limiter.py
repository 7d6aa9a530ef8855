"""Benchmark 3: the shared token bucket. Configured 20/s, offered 100/s for 30 s from several processes.

Each of P processes calls ``jobs.ratelimit.acquire`` at an even pace (100/P per second, from a common start
time) and records when each call was admitted. Figures: the admitted rate over the run (all admissions, and
in steady state, i.e. without the bucket's initial fill), and the largest burst: the most admissions in any
interval beyond what the refill allows, max over i<j of (j - i + 1) - rate * (t_j - t_i), which a token
bucket keeps at or under its size (burst = one second's worth, 20).

    python -m bench.rate_limiter [--quick] [--seconds S] [--processes P]
"""

from __future__ import annotations

import json
import os
import subprocess
import time

from bench import common

RATE = 20.0
OFFERED = 100.0
TOLERANCE = 0.05


def _offer(seconds: float, per_second: float, offset: float) -> None:
    """Child process: say ready, read the common start time, offer ``per_second`` calls for ``seconds``;
    print admitted timestamps as JSON."""
    import sys

    from jobs import ratelimit

    ratelimit.acquire(provider="warm-up", rate=RATE, burst=RATE)  # connect and load the script before the start
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    admitted, offered = [], 0
    interval = 1.0 / per_second
    next_at = start_at + offset * interval
    end = start_at + seconds
    while next_at < end:
        delay = next_at - time.time()
        if delay > 0:
            time.sleep(delay)
        offered += 1
        if ratelimit.acquire(provider="simulated", rate=RATE, burst=RATE).allowed:
            admitted.append(time.time())
        next_at += interval
    print(json.dumps({"offered": offered, "admitted": admitted}))


def max_excess(times: list[float], rate: float) -> float:
    """max over i <= j of (j - i + 1) - rate * (t_j - t_i), in one pass (times sorted)."""
    best = 0.0
    highest = float("-inf")  # max over i <= j of (rate * t_i - i)
    origin = times[0] if times else 0.0
    for j, t in enumerate(times):
        highest = max(highest, rate * (t - origin) - j)
        best = max(best, (j + 1) - rate * (t - origin) + highest)
    return best


def main(argv=None) -> dict:
    def extra(parser):
        parser.add_argument("--seconds", type=float, default=None, help="default 30, quick 10")
        parser.add_argument("--processes", type=int, default=4)
        parser.add_argument("--child", nargs=3, type=float, help=argparse_hidden())

    args = common.parse_args(__doc__.splitlines()[0], argv, extra)
    common.setup_django()
    if args.child:
        seconds, per_second, offset = args.child
        _offer(seconds, per_second, offset)
        return {}
    from jobs import ratelimit

    seconds = args.seconds or (10.0 if args.quick else 30.0)
    report = common.Report(
        f"3. Rate limiter ({RATE:.0f}/s configured, {OFFERED:.0f}/s offered by {args.processes} processes for "
        f"{seconds:.0f} s)",
        quick=args.quick,
    )
    common.reset_state()
    from aipb.redis_client import get_redis

    get_redis().delete(ratelimit.bucket_key("simulated"))
    per_process = OFFERED / args.processes
    procs = [
        subprocess.Popen(
            [common.PY, "-m", "bench.rate_limiter", "--child", str(seconds), str(per_process), str(i / args.processes)],
            cwd=common.ROOT,
            env=dict(os.environ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(args.processes)
    ]
    for proc in procs:  # every child has imported Django and talked to Redis once
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("rate limiter client did not start")
    get_redis().delete(ratelimit.bucket_key("simulated"))
    start_at = time.time() + 0.5
    for proc in procs:
        proc.stdin.write(f"{start_at}\n")
        proc.stdin.flush()
    offered, admitted = 0, []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        data = json.loads(out.strip().splitlines()[-1])
        offered += data["offered"]
        admitted += data["admitted"]
    admitted.sort()
    burst = RATE
    rate_all = len(admitted) / seconds
    steady = (len(admitted) - burst) / seconds
    excess = max_excess(admitted, RATE)
    # per-second counts, for the record
    buckets = [0] * int(seconds + 1)
    for t in admitted:
        buckets[min(len(buckets) - 1, int(t - start_at))] += 1
    report.figure("offered", f"{offered / seconds:.1f} calls/s ({offered} calls)")
    report.figure(
        "admitted rate, steady state (initial bucket of 20 left out)",
        f"{steady:.2f}/s ({(steady / RATE - 1) * 100:+.1f} %)",
        f"{RATE:.0f}/s ± {TOLERANCE * 100:.0f} %",
        "met" if abs(steady / RATE - 1) <= TOLERANCE else "**short**",
    )
    report.figure("admitted rate, all admissions", f"{rate_all:.2f}/s ({len(admitted)} admitted)")
    report.figure(
        "largest burst beyond the refill",
        f"{excess:.2f} tokens",
        f"<= bucket size {burst:.0f} (+1 for clock skew between processes)",
        "met" if excess <= burst + 1 else "**short**",
    )
    report.figure("admitted in each second of the run", " ".join(str(n) for n in buckets))
    report.note(
        "timestamps are taken by each client after Redis answered; the bucket itself runs on Redis's clock "
        "(one Lua script), so the burst figure includes up to a round trip of client-side jitter"
    )
    if not args.no_save:
        report.save()
    return {"steady": steady, "all": rate_all, "excess": excess, "offered": offered}


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
