"""Check the books after a drill: what Postgres says happened, and whether /metrics agrees.

``check_books()`` reads every job, attempt, usage row and dead letter of the drill's database
and raises AssertionError listing every discrepancy:

- every job is in exactly one final state, consistently: succeeded ⇔ a result that passes
  ``jobs.schema.validate_page`` and exactly one succeeded attempt (the job's last); dead and
  canceled have no result and no succeeded attempt; no job keeps a lease or lacks finished_at;
- every attempt a job was charged for is on record: attempt numbers are exactly 1..attempts
  (a lost attempt is recorded as abandoned by reconcile, never missing);
- usage: an attempt "returned usage" when the provider answered at all — ``validation_passed``
  is not null (the simulated provider and the fake servers report usage with every answer, and
  none with an HTTP error or a timeout). Those attempts, and only those, have exactly one
  TokenUsage row, with the attempt's own token counts;
- spend: each user's month-to-date spend counter equals their usage rows' cost that month;
- routing: every attempt names the provider and model that served it (only an attempt lease recovery
  abandoned for a worker that never came back may not), its usage row is billed to that target, and a
  succeeded job's ``served_by`` is its succeeded attempt's target;
- dead letters: every dead job has exactly one open entry (holding its attempt count) and no
  other job has an open one, so open entries == dead jobs;
- optionally, jobs no drill touched (no abandoned attempt) ended as their injected faults say.

With the /metrics text of the drill's web app it also compares counters with rows:
``ai_jobs_total`` by status with succeeded jobs, dead letters (one per death, also of a job retried
since) and canceled jobs,
``ai_jobs_attempts_total`` for outcomes succeeded, failed and abandoned with attempts by outcome,
``ai_llm_tokens_total`` (prompt, completion) with the TokenUsage sums, and the scrape-time gauge
``ai_dlq_entries{status="open"}`` with open entries. Counters are written after the attempt's
transaction commits, so a process SIGKILLed between the commit and the increment loses that
attempt's increments: the counters must then be ≤ the database and short by at most
``metrics_slack`` attempts (the number of processes killed); with no kill they must be equal.
This comparison is only meaningful when the metrics directory lived as long as the database.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC

from django.db.models import Sum
from django.db.models.functions import TruncMonth
from prometheus_client.parser import text_string_to_metric_families

from dlq.models import DeadLetter, DeadLetterStatus
from jobs.catalogue import canonical_model
from jobs.models import FINAL_STATUSES, AIJob, AttemptOutcome, JobAttempt, JobStatus
from jobs.schema import validate_page
from usage.models import MonthlySpend, TokenUsage

MAX_SHOWN = 40


@dataclass
class Books:
    jobs: int
    statuses: dict[str, int]
    attempts: dict[str, int]
    usage_rows: int
    dead_letters: dict[str, int]
    touched: int  # jobs with an abandoned attempt: a drill took an attempt from them
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)  # name: (metric, database)

    def summary(self) -> str:
        metrics = ", ".join(f"{k} {m:g}/{d:g}" for k, (m, d) in self.metrics.items())
        return (
            f"{self.jobs} jobs {dict(sorted(self.statuses.items()))}; attempts {dict(sorted(self.attempts.items()))}; "
            f"{self.usage_rows} usage rows; dead letters {dict(sorted(self.dead_letters.items()))}; "
            f"{self.touched} jobs lost an attempt" + (f"; metrics/db: {metrics}" if metrics else "")
        )


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def check_books(
    *,
    using: str = "drill",
    metrics_text: str | None = None,
    metrics_slack: int = 0,
    expected: dict[str, str] | None = None,
) -> Books:
    problems: list[str] = []
    jobs = list(
        AIJob.objects.using(using).values(
            "id",
            "status",
            "attempts",
            "result",
            "error_type",
            "finished_at",
            "lease_expires_at",
            "idempotency_key",
            "served_provider",
            "served_model",
        )
    )
    attempts: dict = defaultdict(list)
    for row in JobAttempt.objects.using(using).values(
        "job_id",
        "number",
        "outcome",
        "error_type",
        "error_message",
        "validation_passed",
        "prompt_tokens",
        "completion_tokens",
        "provider",
        "model",
    ):
        attempts[row["job_id"]].append(row)
    usage: dict = defaultdict(list)
    usage_rows = 0
    for row in TokenUsage.objects.using(using).values(
        "job_id", "attempt", "prompt_tokens", "completion_tokens", "provider", "model"
    ):
        usage[(row["job_id"], row["attempt"])].append(row)
        usage_rows += 1
    open_letters: dict = defaultdict(list)
    letters: Counter = Counter()
    for row in DeadLetter.objects.using(using).values("job_uuid", "status", "attempts"):
        letters[row["status"]] += 1
        if row["status"] == DeadLetterStatus.OPEN:
            open_letters[row["job_uuid"]].append(row)

    statuses: Counter = Counter()
    outcomes: Counter = Counter()
    touched = 0
    usage_expected: set = set()
    for job in jobs:
        jid, status = job["id"], job["status"]
        statuses[status] += 1
        mine = sorted(attempts.get(jid, []), key=lambda a: a["number"])
        outcomes.update(a["outcome"] for a in mine)
        succeeded = [a["number"] for a in mine if a["outcome"] == AttemptOutcome.SUCCEEDED]
        if any(a["outcome"] == AttemptOutcome.ABANDONED for a in mine):
            touched += 1
        elif expected and job["idempotency_key"] in expected and expected[job["idempotency_key"]] != status:
            story = "; ".join(
                f"#{a['number']} {a['outcome']} {a['error_type']} {a['error_message'][:80]!r}" for a in mine
            )
            problems.append(
                f"{jid}: {status} ({job['error_type']}), but its faults say {expected[job['idempotency_key']]} "
                f"(not touched); attempts: {story}"
            )

        if status not in FINAL_STATUSES:
            problems.append(f"{jid}: not final ({status})")
        if job["lease_expires_at"] is not None:
            problems.append(f"{jid}: {status} but still holds a lease")
        if status in FINAL_STATUSES and job["finished_at"] is None:
            problems.append(f"{jid}: {status} without finished_at")
        numbers = [a["number"] for a in mine]
        if numbers != list(range(1, job["attempts"] + 1)):
            problems.append(f"{jid}: attempts={job['attempts']} but attempt rows {numbers}")

        if status == JobStatus.SUCCEEDED:
            if len(succeeded) != 1:
                problems.append(f"{jid}: succeeded with {len(succeeded)} succeeded attempts {succeeded}")
            elif succeeded[0] != job["attempts"]:
                problems.append(f"{jid}: succeeded on attempt {succeeded[0]} but has {job['attempts']} attempts")
            if job["result"] is None:
                problems.append(f"{jid}: succeeded without a result")
            else:
                errors = validate_page(job["result"])
                if errors:
                    problems.append(f"{jid}: result is not a valid page: {errors[:2]}")
            if job["error_type"]:
                problems.append(f"{jid}: succeeded with error_type {job['error_type']}")
            served = [(a["provider"], a["model"]) for a in mine if a["outcome"] == AttemptOutcome.SUCCEEDED]
            if served and served[0] != (job["served_provider"], job["served_model"]):
                problems.append(f"{jid}: served_by {job['served_provider']}/{job['served_model']}, attempt {served[0]}")
        else:
            if succeeded:
                problems.append(f"{jid}: {status} but attempts {succeeded} succeeded")
            if job["result"] is not None:
                problems.append(f"{jid}: {status} with a result")

        opened = open_letters.pop(jid, [])
        if status == JobStatus.DEAD:
            if not job["error_type"]:
                problems.append(f"{jid}: dead without an error type")
            if len(opened) != 1:
                problems.append(f"{jid}: dead with {len(opened)} open dead letters")
            elif opened[0]["attempts"] != job["attempts"]:
                problems.append(f"{jid}: dead letter says {opened[0]['attempts']} attempts, job {job['attempts']}")
        elif opened:
            problems.append(f"{jid}: {status} with {len(opened)} open dead letters")

        for a in mine:
            rows = usage.get((jid, a["number"]), [])
            # the target that served each attempt (jobs.routing); only lease recovery's own rows may not know it
            if not a["provider"] and a["outcome"] != AttemptOutcome.ABANDONED:
                problems.append(f"{jid} #{a['number']}: {a['outcome']} without the provider that served it")
            for row in rows:
                if a["provider"] and (row["provider"], row["model"]) != (
                    a["provider"],
                    canonical_model(a["provider"], a["model"]),
                ):
                    problems.append(
                        f"{jid} #{a['number']}: billed to {row['provider']}/{row['model']}, served by "
                        f"{a['provider']}/{a['model']}"
                    )
            if a["outcome"] == AttemptOutcome.SUCCEEDED and a["validation_passed"] is not True:
                problems.append(f"{jid} #{a['number']}: succeeded with validation_passed={a['validation_passed']}")
            if a["validation_passed"] is None:
                if rows:
                    problems.append(f"{jid} #{a['number']}: no answer from the provider but {len(rows)} usage rows")
                if a["prompt_tokens"] or a["completion_tokens"]:
                    problems.append(f"{jid} #{a['number']}: no answer from the provider but tokens recorded")
                continue
            usage_expected.add((jid, a["number"]))
            if len(rows) != 1:
                problems.append(f"{jid} #{a['number']}: the provider answered; {len(rows)} usage rows")
            elif [rows[0][k] for k in ("prompt_tokens", "completion_tokens")] != [
                a["prompt_tokens"],
                a["completion_tokens"],
            ]:
                problems.append(f"{jid} #{a['number']}: usage row tokens differ from the attempt's")
            if a["prompt_tokens"] <= 0:
                problems.append(f"{jid} #{a['number']}: the provider answered but no prompt tokens recorded")

    problems.extend(_spend_problems(using))
    for key in sorted(set(usage) - usage_expected, key=str):
        problems.append(f"usage rows for {key[0]} #{key[1]} without an answered attempt")
    for jid in open_letters:
        problems.append(f"open dead letter for job {jid}, which is missing")
    if letters[DeadLetterStatus.OPEN] != statuses[JobStatus.DEAD]:
        problems.append(f"open dead letters {letters[DeadLetterStatus.OPEN]} != dead jobs {statuses[JobStatus.DEAD]}")

    books = Books(
        jobs=len(jobs),
        statuses=dict(statuses),
        attempts=dict(outcomes),
        usage_rows=usage_rows,
        dead_letters=dict(letters),
        touched=touched,
    )
    if metrics_text is not None:
        _check_metrics(books, metrics_text, metrics_slack, usage, problems)

    if problems:
        shown = "\n  ".join(problems[:MAX_SHOWN])
        more = f"\n  ... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
        summary = books.summary()
        raise AssertionError(f"the books do not balance ({len(problems)} problems):\n  {shown}{more}\n{summary}")
    return books


def _spend_problems(using: str) -> list[str]:
    """Each user's month-to-date spend (what usage.budgets checks) is exactly their usage rows' cost that month,
    whatever the drill did: a row spooled and replayed, or recorded twice, is counted once."""
    kept = {
        (row["user_id"], row["month"]): row["spent_usd"]
        for row in MonthlySpend.objects.using(using).filter(user__isnull=False).values("user_id", "month", "spent_usd")
    }
    rows = {
        (row["owner_id"], row["month"].date()): row["total"]
        for row in TokenUsage.objects.using(using)
        .filter(cost__gt=0)
        .annotate(month=TruncMonth("created_at", tzinfo=UTC))
        .values("owner_id", "month")
        .annotate(total=Sum("cost"))
    }
    return [
        f"user {owner} in {month:%Y-%m}: spent {kept.get((owner, month))} by the counter, {rows.get((owner, month))} "
        "by the usage rows"
        for owner, month in sorted(set(kept) | set(rows))
        if kept.get((owner, month)) != rows.get((owner, month))
    ]


def _check_metrics(books: Books, text: str, slack: int, usage: dict, problems: list[str]) -> None:
    rows = [row for group in usage.values() for row in group]
    per_row = {
        "prompt": max((r["prompt_tokens"] for r in rows), default=0),
        "completion": max((r["completion_tokens"] for r in rows), default=0),
    }
    compared: list[tuple[str, float, float, float]] = []  # name, metric, database, allowed shortfall
    # ai_jobs_total counts entries into a final state. A job succeeds at most once; a dead job may be
    # retried and die again, and every death writes one dead letter in its own transaction.
    deaths = sum(books.dead_letters.values())
    for status, database in (
        (JobStatus.SUCCEEDED, books.statuses.get(JobStatus.SUCCEEDED, 0)),
        (JobStatus.DEAD, deaths),
        (JobStatus.CANCELED, books.statuses.get(JobStatus.CANCELED, 0)),  # the drills never retry a canceled job
    ):
        name = f"ai_jobs_total{{status={status}}}"
        compared.append((name, metric_sum(text, "ai_jobs_total", status=status), database, slack))
    # abandoned too: lease recovery counts the attempts it takes back (jobs.accounting), exactly once
    for outcome in (AttemptOutcome.SUCCEEDED, AttemptOutcome.FAILED, AttemptOutcome.ABANDONED):
        name = f"ai_jobs_attempts_total{{outcome={outcome}}}"
        compared.append(
            (name, metric_sum(text, "ai_jobs_attempts_total", outcome=outcome), books.attempts.get(outcome, 0), slack)
        )
    for kind in ("prompt", "completion"):
        compared.append(
            (f"ai_llm_tokens_total{{type={kind}}}", metric_sum(text, "ai_llm_tokens_total", type=kind),
             sum(r[f"{kind}_tokens"] for r in rows), slack * per_row[kind])
        )  # fmt: skip
    compared.append(
        ('ai_dlq_entries{status=open}', metric_sum(text, "ai_dlq_entries", status="open"),
         books.dead_letters.get(DeadLetterStatus.OPEN, 0), 0)
    )  # fmt: skip
    for name, metric, database, allowed in compared:
        books.metrics[name] = (metric, database)
        if not database - allowed <= metric <= database:
            limit = f" (a shortfall of up to {allowed:g} allowed: {slack} processes were killed)" if allowed else ""
            problems.append(f"metrics: {name} = {metric:g}, database says {database:g}{limit}")
