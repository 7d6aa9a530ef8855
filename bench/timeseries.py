"""Benchmark 7: the dashboard's time series at scale. 1,000,000 attempts over the last 7 days.

About 667,000 jobs (1.5 attempts each: 60 % one, 30 % two, 10 % three; 5 % dead), one JobAttempt and one
TokenUsage row per attempt, all inside the 7-day window, written by ``INSERT ... SELECT generate_series``,
then VACUUM ANALYZE. Figures:

- the cold fill: the first 7-day request, which rolls up every settled minute of the week from the rows
  (monitoring.rollups.rollup_fill; the same work the raw GROUP BYs would do on every request);
- ``stats_timeseries`` for each window once the rollup is warm, over repeated calls (each still rolls up
  any minute that settled meanwhile and computes the last minutes from the rows);
- the 7-day window through the API (``GET /api/ai/stats/timeseries?window=7d``, DRF's test client, no
  network), the figure the target is about.

    python -m bench.timeseries [--quick] [--attempts N] [--keep]
"""

from __future__ import annotations

import time

from bench import common

TARGET_MS = 100.0
PAIRS = [
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-3-haiku"),
    ("google", "gemini-2.0-flash"),
    ("simulated", "sim-small"),
]

# A job's attempts: three when g % 10 = 0, two when g % 10 is 1 to 3, else one; every 20th job is dead.
JOBS_SQL = """
INSERT INTO jobs_aijob
    (id, owner_id, provider, model, prompt, options, priority, status, attempts, max_attempts, budget_base,
     result, error_type, error_message, created_at, updated_at, started_at, finished_at, next_attempt_at,
     lease_expires_at, idempotency_key, request_fingerprint, rq_job_id, deliveries)
SELECT gen_random_uuid(), %(owner)s,
       (%(providers)s::text[])[1 + g %% 4], (%(models)s::text[])[1 + g %% 4],
       'A landing page for a bakery in Lisbon, number ' || g, '{}'::jsonb, 'normal',
       CASE WHEN g %% 20 = 0 THEN 'dead' ELSE 'succeeded' END, a.n, 3, 0,
       NULL, CASE WHEN g %% 20 = 0 THEN 'TIMEOUT' ELSE '' END, '',
       ts, ts, ts + interval '1 second', ts + make_interval(secs => 1 + a.n * 2.5), NULL, NULL,
       NULL, '', '', a.n
  FROM generate_series(1, %(jobs)s) AS g,
       LATERAL (SELECT now() - interval '1 minute'
                       - make_interval(secs => (g::float8 / %(jobs)s) * (7 * 86400 - 120)) AS ts) AS t,
       LATERAL (SELECT CASE WHEN g %% 10 = 0 THEN 3 WHEN g %% 10 <= 3 THEN 2 ELSE 1 END AS n) AS a
"""

ATTEMPTS_SQL = """
INSERT INTO jobs_jobattempt
    (job_id, number, started_at, finished_at, outcome, error_type, error_message, latency_ms, prompt_tokens,
     completion_tokens, cached_tokens, provider_request_id, validation_passed)
SELECT j.id, n, j.started_at + make_interval(secs => (n - 1) * 2.5),
       j.started_at + make_interval(secs => (n - 1) * 2.5) + make_interval(secs => l.ms / 1000.0),
       CASE WHEN n < j.attempts OR j.status = 'dead' THEN 'failed' ELSE 'succeeded' END,
       CASE WHEN n < j.attempts OR j.status = 'dead'
            THEN (ARRAY['TIMEOUT', 'RATE_LIMIT', 'VALIDATION_ERROR', 'PROVIDER_ERROR'])[1 + n %% 4] ELSE '' END,
       '', l.ms, 800, 1200, 0, '', n = j.attempts AND j.status = 'succeeded'
  FROM jobs_aijob AS j, generate_series(1, j.attempts) AS n,
       LATERAL (SELECT 200 + (hashtext(j.id::text || n) & 2047) AS ms) AS l
"""

USAGE_SQL = """
INSERT INTO usage_tokenusage
    (owner_id, job_id, attempt, provider, model, prompt_tokens, completion_tokens, cached_tokens,
     cache_write_tokens, cost, created_at)
SELECT j.owner_id, j.id, a.number, j.provider, j.model, a.prompt_tokens, a.completion_tokens, 0, 0,
       0.000120000, a.finished_at
  FROM jobs_jobattempt AS a JOIN jobs_aijob AS j ON j.id = a.job_id
"""


def fill(attempts: int) -> tuple[int, float]:
    from django.db import connection

    owner = common.bench_user().pk
    jobs = int(attempts / 1.5)
    t = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE monitoring_minuterollup, usage_tokenusage, dlq_deadletter, jobs_jobattempt, jobs_aijob "
            "RESTART IDENTITY CASCADE"
        )
        cursor.execute(
            JOBS_SQL,
            {
                "owner": owner,
                "jobs": jobs,
                "providers": [p for p, _ in PAIRS],
                "models": [m for _, m in PAIRS],
            },
        )
        cursor.execute(ATTEMPTS_SQL, [])
        cursor.execute(USAGE_SQL, [])
        cursor.execute("SELECT count(*) FROM jobs_jobattempt")
        written = cursor.fetchone()[0]
    seconds = time.perf_counter() - t
    common.vacuum_analyze("jobs_aijob", "jobs_jobattempt", "usage_tokenusage")
    return written, seconds


def main(argv=None) -> dict:
    def extra(parser):
        parser.add_argument("--attempts", type=int, default=None, help="default 1,000,000, quick 100,000")
        parser.add_argument("--keep", action="store_true", help="reuse the rows already there if the count matches")

    args = common.parse_args(__doc__.splitlines()[0], argv, extra)
    common.setup_django()
    from django.db import connection
    from rest_framework.test import APIClient

    from jobs.models import JobAttempt
    from monitoring import timeseries
    from monitoring.models import HourRollup, MinuteRollup

    attempts = args.attempts or (100_000 if args.quick else 1_000_000)
    report = common.Report(f"7. Dashboard time series ({attempts:,} attempts over 7 days)", quick=args.quick)
    if args.keep and JobAttempt.objects.count() == attempts:
        report.note("rows kept from a previous run (--keep)")
    else:
        attempts, seconds = fill(attempts)
        report.figure(f"bulk insert of {attempts:,} attempts with their jobs and usage rows", f"{seconds:.1f} s")

    MinuteRollup.objects.all().delete()
    HourRollup.objects.all().delete()
    t = time.perf_counter()
    body = timeseries.stats_timeseries(window="7d")
    cold = time.perf_counter() - t
    with connection.cursor() as cursor:
        cursor.execute("VACUUM (ANALYZE) monitoring_minuterollup")
    report.figure(
        f"cold 7-day request: {MinuteRollup.objects.count():,} minutes rolled up from "
        f"{body['totals']['attempts']:,} attempts",
        f"{cold * 1000:.0f} ms",
    )
    repeat = 10 if args.quick else 30
    results = {"cold_ms": cold * 1000}
    for window in timeseries.WINDOWS:
        samples = common.timed(lambda w=window: timeseries.stats_timeseries(window=w), repeat=repeat)
        results[window] = samples
        report.figure(f"stats_timeseries(window={window!r}), rollup warm", common.ms_summary(samples))

    staff = common.bench_user(staff=True, username="bench-staff")
    client = APIClient(HTTP_HOST="localhost")
    client.force_authenticate(staff)

    def api_call():
        response = client.get("/api/ai/stats/timeseries", {"window": "7d"})
        assert response.status_code == 200, response.content[:300]

    samples = common.timed(api_call, repeat=repeat)
    results["api_7d"] = samples
    p50 = common.percentile(samples, 0.5)
    report.figure(
        "GET /api/ai/stats/timeseries?window=7d (in process)",
        common.ms_summary(samples),
        f"<= {TARGET_MS:.0f} ms",
        common.meets(p50, TARGET_MS, higher_is_better=False),
    )
    report.figure("cold request / warm 7-day API request (p50)", f"{cold * 1000 / p50:.0f}x")
    if not args.no_save:
        report.save()
    return results


if __name__ == "__main__":
    main()
