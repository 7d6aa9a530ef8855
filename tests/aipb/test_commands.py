"""aipb.commands: the base of the operator commands and the helpers they share.

A small command of the test's own shows the base's parts one by one; the closed-pipe tests run the real
commands as processes, since only a real pipe shows what an operator's `| head -1` does.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from aipb.commands import (
    OperatorCommand,
    Progress,
    age,
    choice,
    clip,
    parse_day,
    parse_int,
    parse_uuid,
    parse_when,
    resolve_id,
)
from aipb.exceptions import Conflict
from jobs.models import AIJob
from tests.ops.conftest import BASE_DIR, child_env


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


class Keyboard(io.StringIO):
    """stdin on a terminal, with what the operator types."""

    def isatty(self) -> bool:
        return True


class Sample(OperatorCommand):
    """`sample greet|fail|bulk|confirm|prices list|prices set`: each verb shows one part of the base."""

    calls: list = []

    def add_subcommands(self, sub):
        p = sub.add_parser("greet")
        p.add_argument("--name", default="world")
        p.add_argument("--json", action="store_true")
        sub.add_parser("fail")
        p = sub.add_parser("bulk")
        p.add_argument("--count", type=int, default=100)
        p = sub.add_parser("confirm")
        p.add_argument("--yes", action="store_true")
        prices = self.subcommands(sub.add_parser("prices"), dest="prices_action")
        prices.add_parser("list")
        prices.add_parser("set").add_argument("model")

    def _greet(self, *, name, json, **_):
        if json:
            self.print_json({"hello": name})
        else:
            self.stdout.write(f"hello {name}")

    def _fail(self, **_):
        raise Conflict("job 42 is running;\n  try again later")

    def _bulk(self, *, count, **_):
        progress = self.progress("working")
        for done in range(1, count + 1):
            if progress:
                progress(done, count)
        self.stdout.write(f"did {count}")

    def _confirm(self, *, yes, **_):
        self.confirm(yes=yes, action="do it", question=lambda: "Do it to 3 things?", declined="not done")
        self.stdout.write("done")

    def _prices_list(self, **options):
        Sample.calls.append(("prices list", sorted(k for k in options if k in ("action", "prices_action"))))

    def _prices_set(self, *, model, **_):
        Sample.calls.append(("prices set", model))


def sample(*args: str, stdout: StringIO | None = None) -> str:
    out = stdout or StringIO()
    call_command(Sample(), *args, stdout=out, stderr=StringIO(), no_color=True)
    return out.getvalue()


def command_writing_to(out: StringIO) -> OperatorCommand:
    """A command set up as for a run (stdout, style), for calling its printers directly."""
    command = Sample()
    call_command(command, "greet", stdout=out, no_color=True)
    out.truncate(0), out.seek(0)
    return command


# --- dispatch and errors ---


def test_subcommands_dispatch_to_their_methods_nested_ones_too():
    assert sample("greet", "--name", "ops") == "hello ops\n"
    Sample.calls = []
    sample("prices", "list")
    sample("prices", "set", "gpt-4o")
    # the dispatch keys are consumed, not passed on as options
    assert Sample.calls == [("prices list", []), ("prices set", "gpt-4o")]


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "the following arguments are required: {greet,fail,bulk,confirm,prices}"),
        (("prices",), "the following arguments are required: {list,set}"),
        (("explode",), "invalid choice: 'explode'"),
        (("greet", "--bogus"), "unrecognized arguments: --bogus"),
    ],
)
def test_a_missing_or_unknown_subcommand_is_a_command_error_naming_the_choices(args, message):
    with pytest.raises(CommandError, match=message.replace("{", r"\{").replace("}", r"\}")):
        sample(*args)


def test_a_service_error_is_a_command_error_of_one_line():
    with pytest.raises(CommandError) as excinfo:
        sample("fail")
    assert str(excinfo.value) == "job 42 is running; try again later"


# --- output ---


def test_json_is_indented_and_encodes_what_the_api_encodes():
    assert json.loads(sample("greet", "--json")) == {"hello": "world"}
    out = StringIO()
    command = command_writing_to(out)
    moment = datetime(2025, 1, 31, 14, 0, tzinfo=UTC)
    command.print_json({"cost": Decimal("1.50"), "at": moment, "id": uuid.UUID(int=1)})
    assert out.getvalue() == (
        '{\n  "cost": "1.50",\n  "at": "2025-01-31T14:00:00Z",\n  "id": "00000000-0000-0000-0000-000000000001"\n}\n'
    )
    out.truncate(0), out.seek(0)
    command.print_json({"a": 1}, one_line=True)
    command.print_json({"a": 2}, one_line=True)
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [{"a": 1}, {"a": 2}]


def test_table_pads_columns_right_aligns_numbers_and_never_pads_the_last_text_column():
    out = StringIO()
    command = command_writing_to(out)
    command.print_table(("NAME", "COUNT", "NOTE"), [("alpha", 5, "short"), ("b", 12345, None)], right=(1,))
    assert out.getvalue().splitlines() == [
        "NAME   COUNT  NOTE",
        "alpha      5  short",
        "b      12345",
    ]
    out.truncate(0), out.seek(0)
    command.print_table(("model", "requests"), [("gpt-4o", "1,000")], right=(1,), rule=True)
    assert out.getvalue().splitlines() == ["model   requests", "------  --------", "gpt-4o     1,000"]


def test_table_styles_apply_after_padding_so_columns_stay_aligned():
    out = StringIO()
    command = command_writing_to(out)
    command.print_table(
        ("ID", "STATUS", "AGE"),
        [("1", "dead", "5m"), ("22", "succeeded", "1h")],
        header_style=lambda text: text.lower(),
        styles={1: lambda text: f"<{text}>"},
    )
    assert out.getvalue().splitlines() == [
        "id  status     age",
        "1   <dead     >  5m",
        "22  <succeeded>  1h",
    ]


def test_clip_is_one_line_with_an_ellipsis_where_it_was_cut():
    assert clip("a  page\nfor   a bakery", 40) == "a page for a bakery"
    assert clip("abcdefghij", 10) == "abcdefghij"
    assert clip("abcdefghijk", 10) == "abcdefghi…" and len(clip("abcdefghijk", 10)) == 10
    assert clip(None, 5) == "" and clip("", 5) == ""


def test_age_in_the_largest_whole_unit():
    now = timezone.now()
    assert age(None) == ""
    assert [age(now - timedelta(seconds=s), now) for s in (0, 59, 60, 3_599, 3_600, 86_400 * 3)] == [
        "0s",
        "59s",
        "1m",
        "59m",
        "1h",
        "3d",
    ]
    assert age(now + timedelta(minutes=5), now) == "0s"  # a clock ahead of ours is not negative time


# --- progress and confirmation ---


def test_progress_only_on_a_terminal_and_about_every_tenth():
    assert sample("bulk", "--count", "100") == "did 100\n"  # a pipe or a file: results only
    lines = sample("bulk", "--count", "100", stdout=Terminal()).splitlines()
    assert lines[0] == "working: 1/100 (1%)" and lines[-2] == "working: 100/100 (100%)" and lines[-1] == "did 100"
    assert 10 <= len(lines) - 1 <= 12
    assert sample("bulk", "--count", "49", stdout=Terminal()) == "did 49\n"  # too few to be worth it


def test_progress_lines_themselves():
    lines: list[str] = []
    progress = Progress(lines.append, "retrying", threshold=3)
    for done in range(1, 4):
        progress(done, 3)
    assert lines == ["retrying: 1/3 (33%)", "retrying: 2/3 (66%)", "retrying: 3/3 (100%)"]


def test_confirm_refuses_without_a_terminal_and_goes_on_with_yes(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # piped input never counts as an answer
    with pytest.raises(CommandError) as excinfo:
        sample("confirm")
    assert str(excinfo.value) == "refusing to do it without --yes (stdin is not a terminal)"
    assert sample("confirm", "--yes") == "done\n"


@pytest.mark.parametrize("answer, done", [("y\n", True), ("YES\n", True), ("n\n", False), ("\n", False), ("", False)])
def test_confirm_on_a_terminal_asks_on_stderr(monkeypatch, answer, done):
    monkeypatch.setattr(sys, "stdin", Keyboard(answer))
    out, err = StringIO(), StringIO()
    if done:
        call_command(Sample(), "confirm", stdout=out, stderr=err)
        assert out.getvalue() == "done\n"
    else:
        with pytest.raises(CommandError, match="^not done$"):
            call_command(Sample(), "confirm", stdout=out, stderr=err)
        assert out.getvalue() == ""
    assert err.getvalue() == "Do it to 3 things? [y/N] "  # on stderr: seen even with stdout redirected


# --- parsers ---


def test_parse_uuid():
    value = uuid.uuid4()
    assert parse_uuid(str(value)) == value and parse_uuid(value.hex.upper()) == value
    with pytest.raises(CommandError, match=r"^not a valid dead letter job: 'x' \(expected a UUID\)$"):
        parse_uuid("x", what="dead letter job")


def test_parse_when_dates_date_times_and_the_end_of_a_day(settings):
    settings.TIME_ZONE = "UTC"
    assert parse_when("2025-01-31", option="--since") == datetime(2025, 1, 31, tzinfo=UTC)
    assert parse_when("2025-01-31", option="--until", end_of_day=True) == datetime(2025, 2, 1, tzinfo=UTC)
    assert parse_when("2025-01-31T14:00Z", option="--since") == datetime(2025, 1, 31, 14, tzinfo=UTC)
    assert parse_when("2025-01-31T14:00:00+02:00", option="--since", end_of_day=True) == datetime(
        2025, 1, 31, 12, tzinfo=UTC
    )
    assert parse_when("2025-01-31 14:00", option="--since") == datetime(2025, 1, 31, 14, tzinfo=UTC)
    for bad in ("yesterday", "2025-13-01", "2025-02-30", "2025-01-31T25:00", ""):
        with pytest.raises(CommandError, match="^--since must be a date .* not "):
            parse_when(bad, option="--since")


def test_parse_day_parse_int_and_choice():
    assert parse_day("2025-02-28", option="--start").isoformat() == "2025-02-28"
    with pytest.raises(CommandError, match=r"^--start is not a date \(YYYY-MM-DD\): '2025-02-30'$"):
        parse_day("2025-02-30", option="--start")
    assert parse_int("0", option="--offset", minimum=0, maximum=10) == 0
    for bad in ("-1", "11", "abc", "1.5", "", "1e3"):
        with pytest.raises(CommandError, match=rf"^--offset must be a whole number from 0 to 10, not '{bad}'$"):
            parse_int(bad, option="--offset", minimum=0, maximum=10)
    assert choice(None, option="--status", choices=["a"]) is None and choice("a", option="--status", choices=["a"])
    with pytest.raises(CommandError, match="^--status must be one of a, b, not 'c'$"):
        choice("c", option="--status", choices=["a", "b"])


@pytest.fixture
def three_jobs(user):
    ids = [
        "3f2a1111-0000-4000-8000-000000000001",
        "3f2a2222-0000-4000-8000-000000000002",
        "4b00aaaa-0000-4000-8000-000000000000",
    ]
    for job_id in ids:
        AIJob.objects.create(id=job_id, owner=user, provider="local", model="local-page", prompt="p")
    return [uuid.UUID(job_id) for job_id in ids]


def test_resolve_id_takes_a_uuid_or_a_prefix_that_names_one_row(three_jobs):
    jobs = AIJob.objects.all()
    first, second, third = three_jobs
    assert resolve_id(str(first), queryset=jobs) == first
    assert resolve_id(str(uuid.UUID(int=7)), queryset=jobs) == uuid.UUID(int=7)  # whether it exists is not its job
    assert resolve_id("3f2a1", queryset=jobs) == first
    assert resolve_id("3F2A2222", queryset=jobs) == second
    assert resolve_id("4b00", queryset=jobs) == third
    assert resolve_id(first.hex[:31], queryset=jobs) == first


@pytest.mark.parametrize(
    "value, message",
    [
        ("3f2a", "job id prefix 3f2a is ambiguous (3f2a1111-0000-4000-8000-000000000001, "
                 "3f2a2222-0000-4000-8000-000000000002): give more digits"),
        ("3f2b", "no job id starts with 3f2b"),
        ("3f2", "not a valid job id: '3f2' (expected a UUID); a short id is its first 4 or more hex digits"),
        ("3f2a-1111", "not a valid job id: '3f2a-1111'"),
        ("3f2a1111-0000-4000-8000-00000000000", "not a valid job id"),  # a UUID cut short is not a prefix
        ("zzzz", "not a valid job id: 'zzzz'"),
        ("", "not a valid job id: ''"),
    ],
)  # fmt: skip
def test_resolve_id_refuses_what_is_ambiguous_unknown_or_malformed(three_jobs, value, message):
    with pytest.raises(CommandError) as excinfo:
        resolve_id(value, queryset=AIJob.objects.all(), what="job")
    assert str(excinfo.value).startswith(message) and "\n" not in str(excinfo.value)


def test_resolve_id_lists_at_most_three_matches(user):
    for n in range(5):
        AIJob.objects.create(
            id=f"aaaa{n:04d}-0000-4000-8000-000000000000", owner=user, provider="local", model="local-page", prompt="p"
        )
    with pytest.raises(CommandError, match=r"\(aaaa0000-.*, aaaa0001-.*, aaaa0002-.*, \.\.\.\): give more digits$"):
        resolve_id("aaaa", queryset=AIJob.objects.all())


# --- a closed stdout: `manage.py jobs list | head -1` ---


@pytest.mark.django_db(transaction=True)
def test_a_reader_that_stops_early_ends_the_command_quietly(user):
    # more rows than a pipe buffers (64 KiB), so the command is still writing when head exits
    AIJob.objects.bulk_create(
        AIJob(owner=user, provider="local", model="local-page", prompt=f"A page for shop {n}") for n in range(1000)
    )
    command = subprocess.Popen(
        [sys.executable, "manage.py", "jobs", "list", "--limit", "1000"],
        cwd=BASE_DIR,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    head = subprocess.Popen(["head", "-n1"], stdin=command.stdout, stdout=subprocess.PIPE)
    command.stdout.close()  # head holds the only read end: when it exits, the command's writes fail
    first, _ = head.communicate(timeout=60)
    errors = command.stderr.read().decode()
    command.stderr.close()
    assert command.wait(timeout=60) == 0, errors
    assert first.decode().split()[:3] == ["ID", "STATUS", "PROVIDER"]
    assert "Traceback" not in errors and "BrokenPipe" not in errors and errors == ""


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "args",
    [
        ["jobs", "list", "--json"],
        ["dlq", "stats"],
        ["queue", "status", "--json"],
        ["usage", "prices", "list"],
        ["reconcile", "--dry-run", "--json"],
    ],
)
def test_every_command_ends_quietly_when_stdout_is_already_closed(args, redis_conn):
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read: the first write fails, whenever it comes
    try:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=BASE_DIR,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 0 and result.stderr == ""
