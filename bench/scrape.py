"""Benchmark 6: scrape and lists at scale.

- ``/metrics`` with prometheus_client multiprocess mode on, as deployed: 12 processes (standing in for
  gunicorn workers, RQ workers and their work-horse slots) have written counters and histograms for every
  provider/model/status before the scrape; measured with the jobs table empty and with 1,000,000 jobs
  (``INSERT ... SELECT generate_series``, statuses and dates spread over 90 days), which must not matter;
- the DLQ list (``GET /api/ai/dlq``, first page, and filtered by status and error type) and
  ``GET /api/ai/dlq/stats`` with 10,000 entries (payloads of a realistic size);
- for the record, the jobs list (``GET /api/ai/jobs``, first page) as staff and as one owner over the 1M jobs.

Every request goes through Django's full stack (middleware, auth, DRF) with the test client, in process.

    python -m bench.scrape [--quick] [--jobs N] [--dlq N]
"""

from __future__ import annotations

import os
import time

from bench import common

TARGET_METRICS_MS = 20.0
TARGET_DLQ_MS = 50.0
WRITER_PROCESSES = 12
JOB_OWNERS = 100

JOBS_SQL = """
INSERT INTO jobs_aijob
    (id, owner_id, provider, model, prompt, options, priority, status, attempts, max_attempts, budget_base,
     result, error_type, error_message, created_at, updated_at, started_at, finished_at, next_attempt_at,
     lease_expires_at, idempotency_key, request_fingerprint, rq_job_id, deliveries)
SELECT gen_random_uuid(),
       (%(owners)s::int[])[1 + (g / 7) %% array_length(%(owners)s::int[], 1)],
       (%(providers)s::text[])[1 + g %% 5], (%(models)s::text[])[1 + g %% 5],
       'A landing page for a bakery in Lisbon, number ' || g, '{}'::jsonb,
       (ARRAY['normal', 'normal', 'high', 'low'])[1 + g %% 4],
       s.status, 1 + g %% 3, 3, 0,
       NULL, CASE WHEN s.status = 'dead' THEN 'TIMEOUT' ELSE '' END, '',
       ts, ts, ts, CASE WHEN s.status IN ('succeeded', 'dead', 'canceled') THEN ts END, NULL, NULL,
       NULL, '', '', 1
  FROM generate_series(1, %(rows)s) AS g,
       LATERAL (SELECT now() - make_interval(secs => (g::float8 / %(rows)s) * 90 * 86400) AS ts) AS t,
       LATERAL (SELECT CASE WHEN g %% 100 < 90 THEN 'succeeded' WHEN g %% 100 < 95 THEN 'dead'
                            WHEN g %% 100 < 97 THEN 'canceled' WHEN g %% 100 < 99 THEN 'queued'
                            ELSE 'retrying' END AS status) AS s
"""

DLQ_SQL = """
INSERT INTO dlq_deadletter
    (job_id, job_uuid, error_type, error_message, retryable, attempts, provider, model, payload, status,
     created_at, resolved_at)
SELECT NULL, gen_random_uuid(),
       (ARRAY['TIMEOUT', 'RATE_LIMIT', 'VALIDATION_ERROR', 'AUTH_ERROR', 'PROVIDER_ERROR'])[1 + g %% 5],
       'the provider did not answer within 60 s (attempt 3 of 3)', g %% 5 <> 3, 3,
       (%(providers)s::text[])[1 + g %% 5], (%(models)s::text[])[1 + g %% 5],
       jsonb_build_object(
           'job', jsonb_build_object('id', gen_random_uuid(), 'owner', 'bench-user-' || (g %% 100),
                                     'prompt', repeat('A landing page for a bakery in Lisbon. ', 20),
                                     'options', '{}'::jsonb, 'priority', 'normal', 'max_attempts', 3),
           'attempt_history', (SELECT jsonb_agg(jsonb_build_object(
                'number', n, 'outcome', 'failed', 'error_type', 'TIMEOUT',
                'error_message', 'the provider did not answer within 60 s', 'latency_ms', 60000,
                'prompt_tokens', 0, 'completion_tokens', 0)) FROM generate_series(1, 3) AS n)),
       CASE WHEN g %% 20 < 16 THEN 'open' WHEN g %% 20 < 19 THEN 'retried' ELSE 'discarded' END,
       now() - make_interval(secs => (g::float8 / %(rows)s) * 30 * 86400),
       CASE WHEN g %% 20 >= 16 THEN now() END
  FROM generate_series(1, %(rows)s) AS g
"""

PAIRS = [
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-3-haiku"),
    ("google", "gemini-1.5-flash"),
    ("local", "local-page"),
    ("simulated", "sim-small"),
]


def write_metric_files(processes: int) -> None:
    """Fork processes that each count what a busy worker or web process would, then exit."""
    from monitoring import metrics

    for index in range(processes):
        pid = os.fork()
        if pid == 0:  # child: count, then leave without running any cleanup
            try:
                for provider, model in PAIRS:
                    for status in ("succeeded", "dead", "canceled"):
                        metrics.job_finished(provider=provider, model=model, status=status)
                    for outcome in ("succeeded", "failed", "abandoned"):
                        metrics.attempt_finished(
                            provider=provider, model=model, outcome=outcome, seconds=0.2 * index, error_type="TIMEOUT"
                        )
                    metrics.retry_scheduled(provider=provider, model=model)
                    metrics.usage_recorded(
                        provider=provider, model=model, prompt=100, completion=50, cached=0, cost=None
                    )
                    metrics.rate_limited(provider=provider)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)


def owners() -> list[int]:
    from django.contrib.auth import get_user_model

    user_model = get_user_model()
    names = [f"bench-owner-{i:03d}" for i in range(JOB_OWNERS)]
    existing = set(user_model.objects.filter(username__in=names).values_list("username", flat=True))
    user_model.objects.bulk_create([user_model(username=name) for name in names if name not in existing])
    return list(user_model.objects.filter(username__in=names).order_by("id").values_list("id", flat=True))


def fill(sql: str, table: str, rows: int, **params) -> float:
    from django.db import connection

    t = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            {"rows": rows, "providers": [p for p, _ in PAIRS], "models": [m for _, m in PAIRS], **params},
        )
    seconds = time.perf_counter() - t
    common.vacuum_analyze(table)
    return seconds


def main(argv=None) -> dict:
    def extra(parser):
        parser.add_argument("--jobs", type=int, default=None, help="AIJob rows (default 1,000,000, quick 100,000)")
        parser.add_argument("--dlq", type=int, default=10_000, help="dead-letter entries (default 10,000)")

    args = common.parse_args(__doc__.splitlines()[0], argv, extra)
    metrics_dir = common.scratch_dir("metrics-scrape")
    for f in metrics_dir.glob("*.db"):
        f.unlink()
    common.configure_env()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # read by aipb.settings at setup
    import django

    django.setup()
    from django.test import Client
    from rest_framework.test import APIClient

    jobs = args.jobs or (100_000 if args.quick else 1_000_000)
    repeat = 20 if args.quick else 50
    report = common.Report(f"6. Scrape and lists at scale ({jobs:,} jobs, {args.dlq:,} dead letters)", quick=args.quick)
    common.reset_state()
    write_metric_files(WRITER_PROCESSES)
    web = Client(HTTP_HOST="localhost")
    staff = common.bench_user(staff=True, username="bench-staff")
    api = APIClient(HTTP_HOST="localhost")
    api.force_authenticate(staff)

    def get(client, path, params=None):
        def call():
            response = client.get(path, params or {})
            assert response.status_code == 200, (path, response.status_code, response.content[:300])
            return response

        return call

    results: dict = {}
    samples = common.timed(get(web, "/metrics"), repeat=repeat)
    size = len(web.get("/metrics").content)
    files = len(list(metrics_dir.glob("*.db")))
    results["metrics_empty"] = samples
    report.figure(
        f"/metrics, jobs table empty ({files} metric files from {WRITER_PROCESSES} processes, {size / 1024:.0f} KiB)",
        common.ms_summary(samples),
        f"<= {TARGET_METRICS_MS:.0f} ms",
        common.meets(common.percentile(samples, 0.5), TARGET_METRICS_MS, higher_is_better=False),
    )

    owner_ids = owners()
    seconds = fill(JOBS_SQL, "jobs_aijob", jobs, owners=owner_ids)
    report.figure(f"bulk insert of {jobs:,} jobs (INSERT ... SELECT generate_series, 9 indexes)", f"{seconds:.1f} s")
    samples = common.timed(get(web, "/metrics"), repeat=repeat)
    results["metrics_jobs"] = samples
    report.figure(
        f"/metrics with {jobs:,} jobs (no dead letters)",
        common.ms_summary(samples),
        f"<= {TARGET_METRICS_MS:.0f} ms",
        common.meets(common.percentile(samples, 0.5), TARGET_METRICS_MS, higher_is_better=False),
    )
    seconds = fill(DLQ_SQL, "dlq_deadletter", args.dlq)
    report.figure(f"bulk insert of {args.dlq:,} dead letters", f"{seconds:.1f} s")

    samples = common.timed(get(web, "/metrics"), repeat=repeat)
    results["metrics_full"] = samples
    report.figure(
        f"/metrics with {jobs:,} jobs and {args.dlq:,} dead letters",
        common.ms_summary(samples),
        f"<= {TARGET_METRICS_MS:.0f} ms",
        common.meets(common.percentile(samples, 0.5), TARGET_METRICS_MS, higher_is_better=False),
    )
    cases = [
        ("GET /api/ai/dlq (first page of 50)", "/api/ai/dlq", None, True),
        ("GET /api/ai/dlq?status=open&error_type=TIMEOUT", "/api/ai/dlq", {"status": "open", "error_type": "TIMEOUT"}),
        ("GET /api/ai/dlq?offset=9000", "/api/ai/dlq", {"offset": "9000"}, True),
        ("GET /api/ai/dlq/stats", "/api/ai/dlq/stats", None, True),
    ]
    for case in cases:
        label, path, params = case[:3]
        is_target = len(case) > 3
        samples = common.timed(get(api, path, params), repeat=repeat)
        results[label] = samples
        report.figure(
            label,
            common.ms_summary(samples),
            f"<= {TARGET_DLQ_MS:.0f} ms" if is_target else "",
            common.meets(common.percentile(samples, 0.5), TARGET_DLQ_MS, higher_is_better=False) if is_target else None,
        )
    from django.contrib.auth import get_user_model

    owner = get_user_model().objects.get(id=owner_ids[0])
    owner_api = APIClient(HTTP_HOST="localhost")
    owner_api.force_authenticate(owner)
    for label, client, params in (
        (f"GET /api/ai/jobs as staff (first page of 50, {jobs:,} jobs)", api, None),
        ("GET /api/ai/jobs?status=dead as staff", api, {"status": "dead"}),
        (f"GET /api/ai/jobs as one owner ({jobs // JOB_OWNERS:,} jobs)", owner_api, None),
    ):
        samples = common.timed(get(client, "/api/ai/jobs", params), repeat=max(5, repeat // 5))
        results[label] = samples
        report.figure(label, common.ms_summary(samples))
    report.note(
        "the figure compared with each target is the p50; requests go through the whole Django/DRF stack in "
        "process (no network, no gunicorn)"
    )
    if not args.no_save:
        report.save()
    return results


if __name__ == "__main__":
    main()
