"""`manage.py providers status|probe|outage` against real Redis and the providers' real code."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from jobs.providers import simulated
from jobs.routing import circuits
from jobs.routing.circuits import Target

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args) -> str:
    out = StringIO()
    call_command("providers", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_outage_takes_a_simulated_model_down_for_a_while_and_clear_ends_it(redis_conn):
    assert "down for 60s" in run("outage", "simulated", "sim-small", "--seconds", "60")
    assert 55 <= simulated.outage_remaining(model="sim-small") <= 60
    assert simulated.outage_remaining(model="sim-large") is None
    assert "outage ended" in run("outage", "simulated", "sim-small", "--clear")
    assert simulated.outage_remaining(model="sim-small") is None
    assert "no outage was on" in run("outage", "simulated", "sim-small", "--clear")


@pytest.mark.parametrize(
    "args,message",
    [
        (("outage", "openai", "gpt-4o-mini", "--seconds", "60"), "simulated provider only"),
        (("outage", "anthropic", "claude-3-haiku", "--clear"), "simulated provider only"),
        (("outage", "simulated", "sim-huge", "--seconds", "60"), "unknown simulated model"),
        (("outage", "simulated", "sim-small", "--seconds", "0"), "--seconds must be"),
        (("outage", "simulated", "sim-small", "--seconds", "86401"), "--seconds must be"),
        (("outage", "simulated", "sim-small", "--seconds", "soon"), "--seconds must be"),
        (("outage", "simulated", "sim-small", "--seconds", "5", "--clear"), "not allowed with"),
        (("outage", "simulated", "sim-small"), "one of the arguments"),
        (("probe", "--every", "0"), "--every must be"),
        (("probe", "--every", "x"), "--every must be"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(redis_conn, args, message):
    with pytest.raises(CommandError) as caught:
        run(*args)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert redis_conn.keys("aipb:simulated:outage:*") == []


def test_probe_records_each_targets_outcome_and_status_shows_it(redis_conn, settings):
    settings.OPENAI_API_KEY = settings.ANTHROPIC_API_KEY = settings.GEMINI_API_KEY = ""
    simulated.outage_set(model="sim-small", seconds=60)

    results = json.loads(run("probe", "--json"))  # one JSON document a round

    by_target = {(r["provider"], r["model"]): r for r in results}
    assert set(by_target) == {("local", "local-page"), ("simulated", "sim-small")}
    assert by_target[("local", "local-page")]["ok"] is True
    assert by_target[("simulated", "sim-small")] == {
        **by_target[("simulated", "sim-small")],
        "ok": False,
        "error_type": "SERVICE_UNAVAILABLE",
    }
    health = circuits.health([Target("simulated", "sim-small")])[Target("simulated", "sim-small")]
    assert health.probe_ok is False and health.last_probe_at is not None
    assert health.circuit == "closed"  # probes do not move circuits

    rows = json.loads(run("status", "--json"))
    assert {(r["provider"], r["model"], r["last_probe_ok"]) for r in rows} == {
        ("local", "local-page", True),
        ("simulated", "sim-small", False),
    }
    table = run("status")
    assert "CIRCUIT" in table and "sim-small" in table and "NO" in table


def test_status_with_nothing_recorded_says_so(redis_conn):
    assert "no target was called or probed" in run("status")


def test_probe_says_in_one_line_what_is_wrong_with_ai_fallbacks(redis_conn, settings):
    settings.AI_FALLBACKS = "simulated:sim-small=nowhere"
    with pytest.raises(CommandError, match="AI_FALLBACKS") as caught:
        run("probe")
    assert "\n" not in str(caught.value)
