"""Usage fixtures: the seeded prices (transactional tests flush them) and usage rows at chosen times."""

from __future__ import annotations

import csv
import importlib
import io
from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.test.utils import CaptureQueriesContext

from jobs.models import AIJob, JobStatus
from jobs.providers.base import Usage
from usage.models import ModelPrice, TokenUsage
from usage.recording import usage_record

seed_migration = importlib.import_module("usage.migrations.0003_seed_prices")
price_data_migration = importlib.import_module("usage.migrations.0006_seed_price_data")


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    # The user factory sets a password; the default hasher's million PBKDF2 rounds cost ~1 s per user.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def prices(db) -> None:
    """The prices the data migrations seed: 0003's table, then the genai-prices data. A transactional
    test before this one may have flushed them (pytest-django truncates every table after such a test),
    so they are put back with the migrations' own functions."""
    seed_migration.seed_prices(ModelPrice)
    price_data_migration.seed_price_data(ModelPrice, TokenUsage)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def record(
    owner,
    *,
    at: datetime,
    provider: str = "simulated",
    model: str = "sim-small",
    prompt: int = 0,
    completion: int = 0,
    cached: int = 0,
    cache_write: int = 0,
    attempt: int = 1,
) -> TokenUsage:
    """One provider call recorded through the real service (price in force at ``at``), at a chosen time."""
    job = AIJob.objects.create(
        owner=owner, provider=provider, model=model, prompt="usage test", status=JobStatus.SUCCEEDED
    )
    usage = Usage(
        prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached, cache_write_tokens=cache_write
    )
    return usage_record(job=job, attempt=attempt, usage=usage, at=at)


TOTAL_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens", "unpriced_requests")


def assert_breakdowns_add_up(body: dict) -> None:
    """Every by_* breakdown sums to the report's totals, to the micro-dollar."""
    for key in ("by_provider", "by_model", "by_user", "by_date"):
        groups = body[key].values()
        for field in TOTAL_FIELDS:
            assert sum(g[field] for g in groups) == body[field], (key, field)
        assert sum((Decimal(g["estimated_cost"]) for g in groups), Decimal(0)) == Decimal(
            body["total_estimated_cost"]
        ), key
        for g in groups:
            assert g["total_tokens"] == g["prompt_tokens"] + g["completion_tokens"]
    assert body["total_tokens"] == body["prompt_tokens"] + body["completion_tokens"]


def csv_totals(text: str) -> dict[str, dict[str, dict]]:
    """Re-aggregate CSV lines into the JSON report's by_* shape (costs summed exactly)."""
    reader = csv.DictReader(io.StringIO(text))
    out: dict[str, dict] = {
        key: defaultdict(lambda: defaultdict(Decimal)) for key in ("date", "provider", "model", "user")
    }
    for line in reader:
        for key in out:
            group = out[key][line[key]]
            for field in TOTAL_FIELDS:
                group[field] += int(line[field])
            group["estimated_cost"] += Decimal(line["estimated_cost"])
    return {
        f"by_{key}": {
            name: {**{f: int(v[f]) for f in TOTAL_FIELDS}, "estimated_cost": f"{v['estimated_cost']:.6f}"}
            for name, v in groups.items()
        }
        for key, groups in out.items()
    }


class UsageQueries(CaptureQueriesContext):
    """Counts the statements that read usage rows (to prove bad input computes nothing)."""

    @property
    def usage_reads(self) -> list[str]:
        return [q["sql"] for q in self.captured_queries if "usage_tokenusage" in q["sql"]]
