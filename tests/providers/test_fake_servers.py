"""The fake servers as their own processes (how e2e tests run them): they start, take scripted
scenarios over HTTP, answer our real provider clients and report what they received."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from jobs.errors import ErrorType, classify
from jobs.providers import reset_providers
from jobs.providers.base import ProviderError
from jobs.schema import parse_page
from tests.fakes import DEFAULT_API_KEY, SAMPLE_PAGE
from tests.providers.conftest import generate

ROOT = Path(__file__).resolve().parents[2]

CASES = [
    ("tests.fakes.openai_server", "openai", "gpt-4o-mini", "OPENAI", "/v1"),
    ("tests.fakes.anthropic_server", "anthropic", "claude-3-haiku", "ANTHROPIC", ""),
    ("tests.fakes.gemini_server", "google", "gemini-2.0-flash", "GEMINI", ""),
]


def _control(origin: str, path: str, payload: object | None = None) -> object:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(origin + path, data=data, method="GET" if data is None else "POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.parametrize(("module", "provider", "model", "prefix", "suffix"), CASES)
def test_standalone_fake_serves_scripted_answers(settings, module, provider, model, prefix, suffix):
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--port", "0", "--api-key", DEFAULT_API_KEY],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, process.stderr.read()
        base_url = line.rsplit(" ", 1)[1].strip()
        origin = base_url.removesuffix(suffix) if suffix else base_url
        setattr(settings, f"{prefix}_API_KEY", DEFAULT_API_KEY)
        setattr(settings, f"{prefix}_BASE_URL", base_url)
        reset_providers()

        assert _control(origin, "/__fake__/health")["ok"] is True
        _control(origin, "/__fake__/scenarios", ["503"])
        with pytest.raises(ProviderError) as info:
            generate(provider, model)
        response = generate(provider, model)

        assert classify(info.value).type == ErrorType.SERVICE_UNAVAILABLE
        assert parse_page(response.text) == SAMPLE_PAGE
        recorded = _control(origin, "/__fake__/requests")
        assert [r["scenario"] for r in recorded] == ["503", "ok"]
        _control(origin, "/__fake__/reset", {})
        assert _control(origin, "/__fake__/requests") == []
    finally:
        process.terminate()
        process.wait(timeout=5)
        reset_providers()
