"""manage.py usage: report (table, --json, --csv) and prices (list, set, load, sync); bad input a one-line
CommandError."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from usage import selectors
from usage.models import ModelPrice
from usage.reports import report_filters, usage_report

from .conftest import assert_breakdowns_add_up, record, utc

pytestmark = pytest.mark.usefixtures("prices")
FEB = ["--start", "2025-02-01", "--end", "2025-02-28"]


def run(*args: str) -> str:
    out = StringIO()
    call_command("usage", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def usage_rows(user, other_user):
    record(user, provider="openai", model="gpt-4o", prompt=1_000_000, cached=1_000_000, at=utc(2025, 2, 3))  # 1.25
    record(other_user, provider="google", model="gemma-4-31b-it", prompt=500, completion=50, at=utc(2025, 2, 4))
    record(other_user, model="sim-large", completion=50_000, at=utc(2025, 2, 28, 23, 59, 59))  # 1.00


def test_report_table_for_people(usage_rows):
    out = run("report", *FEB)
    assert "Usage 2025-02-01 .. 2025-02-28 (UTC, inclusive)" in out
    assert "requests 3" in out and "estimated cost $2.250000" in out
    assert "1 requests are unpriced (not included in the cost)" in out
    assert any(line.startswith("gpt-4o") and line.split()[-2:] == ["1.250000", "0"] for line in out.splitlines())
    assert any(line.startswith("gemma-4-31b-it") and line.split()[-2:] == ["0.000000", "1"] for line in out.split("\n"))
    assert any(line.startswith("bob") and line.split()[-1] == "1.000000" for line in out.splitlines())


def test_report_json_is_the_api_body(usage_rows, staff_api):
    body = json.loads(run("report", *FEB, "--json"))
    assert_breakdowns_add_up(body)
    assert body == staff_api.get("/api/ai/usage/report", {"start": "2025-02-01", "end": "2025-02-28"}).json()
    assert body["total_estimated_cost"] == "2.250000" and body["unpriced_requests"] == 1


def test_report_csv_and_filters(usage_rows, staff_api):
    out = run("report", *FEB, "--csv")
    api = staff_api.get("/api/ai/usage/report", {"start": "2025-02-01", "end": "2025-02-28", "format": "csv"})
    assert out == b"".join(api.streaming_content).decode()
    assert len(out.splitlines()) == 4
    bob = json.loads(run("report", *FEB, "--json", "--user", "bob", "--provider", "simulated"))
    assert bob["requests"] == 1 and bob["total_estimated_cost"] == "1.000000"
    alias = json.loads(run("report", *FEB, "--json", "--model", "gpt-4o-2024-08-06"))
    assert list(alias["by_model"]) == ["gpt-4o"]


def test_report_days_and_defaults(user):
    now = timezone.now()
    record(user, prompt=1_000_000, at=now - timedelta(seconds=1))
    body = json.loads(run("report", "--days", "1", "--json"))
    assert body["start"] == body["end"] == now.date().isoformat() and body["total_estimated_cost"] == "1.000000"
    default = json.loads(run("report", "--json"))
    assert default["start"] == now.date().replace(day=1).isoformat()
    today = now.date()
    expected = usage_report(filters=report_filters(start=today.replace(day=1), end=today))
    assert default == expected


@pytest.mark.parametrize(
    "args, message",
    [
        (["--start", "2025-02-30"], "not a date"),
        (["--end", "tomorrow"], "not a date"),
        (["--start", "2025-03-01", "--end", "2025-02-01"], "is after end"),
        (["--start", "2024-01-01", "--end", "2025-12-31"], "at most 366 days"),
        (["--days", "0"], "days must be an integer from 1 to 366"),
        (["--days", "400"], "days must be"),
        (["--days", "3", "--start", "2025-01-01"], "--days cannot be combined"),
        (["--user", "nobody"], "unknown user 'nobody'"),
        (["--provider", "azure"], "unknown provider"),
        (["--top", "0"], "--top must be"),
        (["--csv", "--json"], "not allowed with argument"),
    ],
)
def test_report_bad_input(usage_rows, args, message):
    with pytest.raises(CommandError, match=message) as excinfo:
        run("report", *args)
    assert "\n" not in str(excinfo.value)


def test_prices_list_table_and_json(db):
    out = run("prices", "list")
    line = next(line for line in out.splitlines() if line.split()[:2] == ["anthropic", "claude-3-opus"])
    assert line.split()[2:6] == ["15", "75", "1.5", "18.75"] and line.endswith("in force")
    [unpriced] = [line for line in out.splitlines() if line.startswith("unpriced (")]
    assert unpriced.startswith("unpriced (usage counted as unpriced, never as zero): ")
    assert "google/gemma-4-31b-it" in unpriced
    listed = json.loads(run("prices", "list", "--json"))
    assert {"provider": "google", "model": "gemini-2.0-flash", "input_per_million": "0.100000",
            "output_per_million": "0.400000", "cached_input_per_million": "0.025000",
            "cache_write_per_million": None, "effective_from": "2024-01-01T00:00:00+00:00"} in listed  # fmt: skip
    # the rows in force and scheduled; superseded ones (the seed's gemini-1.5-pro, o3 before 2025-06-10) not
    assert len(listed) == len(selectors.price_list()) < ModelPrice.objects.count()


def test_prices_set_adds_a_row_and_keeps_history(db):
    future = (timezone.now() + timedelta(days=10)).date()
    out = run(
        "prices", "set", "simulated", "sim-small", "--input", "1.5", "--output", "3", "--cached-input", "0.15",
        "--effective-from", future.isoformat(),
    )  # fmt: skip
    assert out.startswith("price set: simulated/sim-small input 1.5 output 3 cached 0.15 cache write -")
    rows = list(ModelPrice.objects.filter(model="sim-small").order_by("effective_from"))
    assert [r.input_per_million for r in rows] == [Decimal(1), Decimal("1.5")]
    assert rows[1].effective_from == utc(future.year, future.month, future.day)
    listing = run("prices", "list")
    assert [line.split()[-1] for line in listing.splitlines() if " sim-small " in line] == ["scheduled", "force"]
    history = run("prices", "list", "--history")
    assert history.count(" sim-small ") == 2
    now_row = run("prices", "set", "google", "gemma-4-31b-it", "--input", "7", "--output", "21")
    assert "google/gemma-4-31b-it input 7 output 21" in now_row
    [unpriced] = [line for line in run("prices", "list").splitlines() if line.startswith("unpriced (")]
    assert "google/gemma-4-31b-it" not in unpriced and "google/gemma-3," in unpriced


@pytest.mark.parametrize(
    "args, message",
    [
        (["azure", "gpt-4", "--input", "1", "--output", "2"], "unknown provider 'azure'"),
        (["openai", "gpt-9", "--input", "1", "--output", "2"], "unknown model 'gpt-9'"),
        (["openai", "gpt-4", "--input", "-1", "--output", "2"], "must not be negative"),
        (["openai", "gpt-4", "--input", "one", "--output", "2"], "must be a decimal number"),
        (["openai", "gpt-4", "--input", "1", "--output", "2", "--cache-write", "1e9"], "at most"),
        (["openai", "gpt-4", "--input", "1", "--output", "2", "--effective-from", "2025-02-29"], "not a date"),
        (["openai", "gpt-4", "--input", "1", "--output", "2", "--effective-from", "2024-01-01"], "already has"),
        (["openai", "gpt-4", "--input", "1"], "--output"),
    ],
)
def test_prices_set_bad_input_changes_nothing(db, args, message):
    count = ModelPrice.objects.count()
    with pytest.raises(CommandError, match=message) as excinfo:
        run("prices", "set", *args)
    assert "\n" not in str(excinfo.value)
    assert ModelPrice.objects.count() == count


def test_prices_load_file_then_again_is_a_no_op(db, tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            [
                {"provider": "google", "model": "gemma-4-31b-it", "input_per_million": 10, "output_per_million": 30.5,
                 "effective_from": "2026-01-01"},
                {"provider": "openai", "model": "gpt-4o-2024-11-20", "input_per_million": "2",
                 "output_per_million": "8", "effective_from": "2031-05-01T00:00:00Z"},
            ]
        )
    )  # fmt: skip
    out = run("prices", "load", str(path))
    assert out.splitlines()[0] == f"{path}: 2 prices added, 0 already present"
    gemma = ModelPrice.objects.get(model="gemma-4-31b-it")
    assert gemma.output_per_million == Decimal("30.5") and gemma.effective_from == utc(2026, 1, 1)
    assert ModelPrice.objects.filter(model="gpt-4o").count() == 2
    assert run("prices", "load", str(path)).splitlines()[0] == f"{path}: 0 prices added, 2 already present"


def test_prices_list_json_loads_back_unchanged(db, tmp_path):
    path = tmp_path / "export.json"
    path.write_text(run("prices", "list", "--json", "--history"))
    count = ModelPrice.objects.count()
    assert f"0 prices added, {count} already present" in run("prices", "load", str(path))


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot read"),
        ("{not json", "is not valid JSON"),
        ('{"prices": 3}', "expected a JSON list"),
        ('[{"provider": "openai", "model": "gpt-4", "input_per_million": "1", "output_per_million": "1"},'
         ' {"provider": "openai", "model": "gpt-4", "input_per_million": "x", "output_per_million": "1"}]',
         r"prices\[1\]: input_per_million must be a decimal number"),
    ],
)  # fmt: skip
def test_prices_load_bad_files_load_nothing(db, tmp_path, content, message):
    path = tmp_path / "prices.json"
    if content is not None:
        path.write_text(content)
    before = list(ModelPrice.objects.order_by("id").values())
    with pytest.raises(CommandError, match=message) as excinfo:
        run("prices", "load", str(path))
    assert "\n" not in str(excinfo.value)
    assert list(ModelPrice.objects.order_by("id").values()) == before


def test_subcommand_required():
    with pytest.raises(CommandError):
        run()
    with pytest.raises(CommandError):
        run("prices")


def test_prices_sync_shows_the_data_version_and_what_it_adds(db):
    ModelPrice.objects.filter(provider="openai", model__in=("gpt-5-mini", "gpt-5.4")).delete()
    count = ModelPrice.objects.count()

    dry = run("prices", "sync", "--dry-run")
    assert dry.startswith("price data: genai-prices 0.2.3 (bundled, newest price change 20")
    assert "would add 2 prices; " in dry
    assert "  openai/gpt-5-mini from 2024-01-01T00:00:00+00:00: input 0.25, output 2, cached 0.025 (new)" in dry
    assert "openai/gpt-5.4 from 2024-01-01T00:00:00+00:00: input 2.5 (272,000 tokens+: 5)" in dry
    assert "unpriced: google/gemma-4-31b-it: the price data has no price for it" in dry
    assert ModelPrice.objects.count() == count, "a dry run adds nothing"

    body = json.loads(run("prices", "sync", "--json"))
    assert body["dry_run"] is False and body["price_data"]["version"] == "0.2.3"
    assert [(a["model"], a["effective_from"], a["previous"]) for a in body["added"]] == [
        ("gpt-5-mini", "2024-01-01T00:00:00+00:00", None), ("gpt-5.4", "2024-01-01T00:00:00+00:00", None)
    ]  # fmt: skip
    assert body["added"][1]["tiers"]["input_per_million"] == [[272_000, "5"]]
    assert {"provider": "google", "model": "gemma-3", "reason": "the price data has no price for it"} in body[
        "unpriced"
    ]
    assert ModelPrice.objects.count() == count + 2

    again = run("prices", "sync")
    assert "added 0 prices; " in again and ModelPrice.objects.count() == count + 2
    listing = run("prices", "list")
    assert listing.startswith("price data: genai-prices 0.2.3 (bundled")
    line = next(line for line in listing.splitlines() if line.split()[:2] == ["openai", "gpt-5.4"])
    assert line.split()[2:5] == ["2.5+", "15+", "0.25+"], "+: tiered by prompt size"


def test_prices_sync_reports_the_models_an_operator_priced(db):
    run("prices", "set", "openai", "gpt-5-mini", "--input", "0.2", "--output", "1.6")
    assert "kept (an operator's price wins): openai/gpt-5-mini" in run("prices", "sync")


@pytest.mark.parametrize(
    "args, message",
    [
        (["extra"], "unrecognized arguments: extra"),
        (["--dry-run=yes"], "ignored explicit argument 'yes'"),
        (["--since", "2025-01-01"], "unrecognized arguments: --since 2025-01-01"),
    ],
)
def test_prices_sync_bad_input_changes_nothing(db, args, message):
    ModelPrice.objects.filter(provider="openai", model="gpt-5-mini").delete()  # something a sync would add
    before = list(ModelPrice.objects.order_by("id").values())
    with pytest.raises(CommandError, match=message) as excinfo:
        run("prices", "sync", *args)
    assert "\n" not in str(excinfo.value)
    assert list(ModelPrice.objects.order_by("id").values()) == before
