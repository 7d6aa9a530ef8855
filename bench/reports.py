"""Benchmark 5: usage reports at scale. 1,000,000 TokenUsage rows over the last 90 days.

Rows are written by one ``INSERT ... SELECT generate_series`` (100 users, 10 provider/model pairs, every 50th
row unpriced), then VACUUM ANALYZE. Figures:

- the month report (``usage.reports.usage_report`` over the last full calendar month, everyone's usage, as
  staff see it), its latency over repeated calls; also month-to-date and the whole 90 days, and the same
  month through the API (``GET /api/ai/usage/report``, DRF's test client, no network);
- the CSV export of all rows (the 90-day range, ``format=csv``, streamed through the API view) in a separate
  process: time, lines, bytes and that process's peak RSS (ru_maxrss) against its RSS before the export.

    python -m bench.reports [--quick] [--rows N] [--keep]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from datetime import date, timedelta

from bench import common

TARGET_REPORT_MS = 300.0
TARGET_CSV_RSS_MIB = 150.0
USERS = 100
PAIRS = [
    ("openai", "gpt-4o"),
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-3.5-turbo"),
    ("anthropic", "claude-3-5-sonnet"),
    ("anthropic", "claude-3-haiku"),
    ("google", "gemini-1.5-pro"),
    ("google", "gemini-1.5-flash"),
    ("local", "local-page"),
    ("simulated", "sim-small"),
    ("simulated", "sim-large"),
]

INSERT_SQL = """
INSERT INTO usage_tokenusage
    (owner_id, job_id, attempt, provider, model, prompt_tokens, completion_tokens, cached_tokens,
     cache_write_tokens, cost, created_at)
SELECT (%(owners)s::int[])[1 + (g / 10) %% array_length(%(owners)s::int[], 1)],
       NULL, 1 + g %% 3,
       (%(providers)s::text[])[1 + g %% 10],
       (%(models)s::text[])[1 + g %% 10],
       p, c, p / 4, 0,
       CASE WHEN g %% 50 = 0 THEN NULL ELSE round((p * 2.5 + c * 10.0) / 1000000.0, 9) END,
       now() - make_interval(secs => (g::float8 / %(rows)s) * 90 * 86400)
  FROM generate_series(1, %(rows)s) AS g,
       LATERAL (SELECT (200 + (g::bigint * 7919) %% 1800)::int AS p, (100 + (g::bigint * 104729) %% 900)::int AS c) AS t
"""


def users() -> list[int]:
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    names = [f"bench-user-{i:03d}" for i in range(USERS)]
    existing = set(user_model.objects.filter(username__in=names).values_list("username", flat=True))
    user_model.objects.bulk_create([user_model(username=name) for name in names if name not in existing])
    return list(user_model.objects.filter(username__in=names).order_by("id").values_list("id", flat=True))


def fill(rows: int) -> float:
    from django.db import connection

    owners = users()
    t = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE usage_tokenusage RESTART IDENTITY")
        cursor.execute(
            INSERT_SQL,
            {
                "owners": owners,
                "providers": [p for p, _ in PAIRS],
                "models": [m for _, m in PAIRS],
                "rows": rows,
            },
        )
    seconds = time.perf_counter() - t
    common.vacuum_analyze("usage_tokenusage")
    return seconds


def last_full_month(today: date) -> tuple[date, date]:
    end = today.replace(day=1) - timedelta(days=1)
    return end.replace(day=1), end


def csv_child() -> None:
    """In a fresh process: stream the 90-day CSV through the API view; print time, size and RSS as JSON."""
    from django.utils import timezone
    from rest_framework.test import APIClient

    staff = common.bench_user(staff=True, username="bench-staff")
    client = APIClient(HTTP_HOST="localhost")
    client.force_authenticate(staff)
    end = timezone.now().date()
    start = end - timedelta(days=90)
    client.get("/api/ai/usage/report", {"start": end.isoformat(), "end": end.isoformat()})  # warm imports
    before_kib = common.memory_kib(os.getpid())["rss"]
    t = time.perf_counter()
    response = client.get("/api/ai/usage/report", {"start": start.isoformat(), "end": end.isoformat(), "format": "csv"})
    lines = size = 0
    for chunk in response.streaming_content:
        size += len(chunk)
        lines += chunk.count(b"\n")
    seconds = time.perf_counter() - t
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {"status": response.status_code, "seconds": seconds, "lines": lines, "bytes": size}
            | {"rss_before_mib": before_kib / 1024, "peak_rss_mib": peak_kib / 1024}
        )
    )


def main(argv=None) -> dict:
    def extra(parser):
        parser.add_argument("--rows", type=int, default=None, help="default 1,000,000, quick 100,000")
        parser.add_argument("--keep", action="store_true", help="reuse the rows already there if the count matches")
        parser.add_argument("--csv-child", action="store_true", help=argparse_hidden())

    args = common.parse_args(__doc__.splitlines()[0], argv, extra)
    common.setup_django()
    if args.csv_child:
        csv_child()
        return {}
    from django.utils import timezone
    from rest_framework.test import APIClient

    from usage import reports
    from usage.models import TokenUsage

    rows = args.rows or (100_000 if args.quick else 1_000_000)
    report = common.Report(f"5. Usage reports at scale ({rows:,} TokenUsage rows over 90 days)", quick=args.quick)
    if args.keep and TokenUsage.objects.count() == rows:
        report.note("rows kept from a previous run (--keep)")
    else:
        seconds = fill(rows)
        report.figure("bulk insert (INSERT ... SELECT generate_series, 3 indexes)", f"{seconds:.1f} s")

    today = timezone.now().date()
    repeat = 5 if args.quick else 15
    month_start, month_end = last_full_month(today)
    ranges = [
        (f"month report, {month_start:%B %Y}", month_start, month_end, True),
        ("month-to-date report", today.replace(day=1), today, False),
        ("90-day report", today - timedelta(days=89), today, False),
    ]
    results = {}
    for label, start, end, is_target in ranges:
        filters = reports.report_filters(start=start, end=end)
        samples = common.timed(lambda f=filters: reports.usage_report(filters=f), repeat=repeat)
        body = reports.usage_report(filters=filters)
        results[label] = samples
        p50 = common.percentile(samples, 0.5)
        report.figure(
            f"{label} (usage_report; {body['requests']:,} rows)",
            common.ms_summary(samples),
            f"<= {TARGET_REPORT_MS:.0f} ms" if is_target else "",
            common.meets(p50, TARGET_REPORT_MS, higher_is_better=False) if is_target else None,
        )
    staff = common.bench_user(staff=True, username="bench-staff")
    client = APIClient(HTTP_HOST="localhost")
    client.force_authenticate(staff)
    params = {"start": month_start.isoformat(), "end": month_end.isoformat()}

    def api_call():
        response = client.get("/api/ai/usage/report", params)
        assert response.status_code == 200, response.content[:300]

    samples = common.timed(api_call, repeat=repeat)
    report.figure("month report through the API (GET /api/ai/usage/report, in process)", common.ms_summary(samples))

    out = subprocess.run(
        [common.PY, "-m", "bench.reports", "--csv-child"],
        cwd=common.ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    csv = json.loads(out.stdout.strip().splitlines()[-1])
    results["csv"] = csv
    report.figure(
        "CSV export of all rows (90 days, streamed through the API view)",
        f"{csv['seconds']:.1f} s, {csv['lines']:,} lines, {csv['bytes'] / 1024 / 1024:.1f} MiB (HTTP {csv['status']})",
    )
    report.figure(
        "CSV export: peak RSS of the exporting process",
        f"{csv['peak_rss_mib']:.0f} MiB (RSS before the export {csv['rss_before_mib']:.0f} MiB)",
        f"<= {TARGET_CSV_RSS_MIB:.0f} MiB",
        common.meets(csv["peak_rss_mib"], TARGET_CSV_RSS_MIB, higher_is_better=False),
    )
    report.note(
        "the CSV has one line per (day, provider, model, user) with that group's totals, so 1M rows give at most "
        f"90 x {len(PAIRS)} x {USERS} lines; the report latency figure compared with the target is the p50"
    )
    if not args.no_save:
        report.save()
    return results


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
