"""Run every benchmark, each in its own process, and append a full run to bench/RESULTS.md.

`make bench` calls this after starting the embedded servers (when DATABASE_URL / REDIS_URL are unset);
with the URLs set it uses them (see bench.common for the database-name guard).

    python -m bench.run_all [--quick] [--only pipeline,api,...] [--no-save]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import UTC, datetime

from bench import common

BENCHMARKS = ("pipeline", "io_bound", "rate_limiter", "api", "batches", "reports", "scrape")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs, to check that everything works")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--no-save", action="store_true", help="print only; do not append to RESULTS.md")
    args = parser.parse_args(argv)
    selected = [name.strip() for name in args.only.split(",") if name.strip()] or list(BENCHMARKS)
    unknown = sorted(set(selected) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")

    common.configure_env()
    common.ensure_database()
    if not args.no_save:
        kind = "quick run" if args.quick else "full run"
        common.append_results(
            f"## {kind} {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {common.git_commit()}: {', '.join(selected)}\n\n"
        )
    failed = []
    started = time.perf_counter()
    for name in selected:
        cmd = [common.PY, "-m", f"bench.{name}"]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--no-save"] if args.no_save else []
        t = time.perf_counter()
        status = subprocess.run(cmd, cwd=common.ROOT).returncode
        print(f"--- bench.{name}: {'ok' if status == 0 else f'FAILED ({status})'} in {time.perf_counter() - t:.0f} s")
        if status != 0:
            failed.append(name)
            if not args.no_save:
                common.append_results(f"### {name}: FAILED (exit {status}); see the console output\n\n")
    print(f"\nall benchmarks done in {time.perf_counter() - started:.0f} s; results in {common.RESULTS}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
