"""aipb.tracing in this process: when it stays off, and the trace id an operator is shown.

Tracing on (spans exported by a real gunicorn and worker) is tests/e2e/test_tracing.py: installing a tracer
provider here would be for the rest of the test process, which other tests must see untraced.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured
from opentelemetry import trace

from aipb import logs, tracing
from tests.e2e.harness import REPO_ROOT

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OTEL_VARS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SDK_DISABLED",
)


@pytest.fixture
def otel_env(monkeypatch):
    for name in OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "aipb", "OTEL_TRACES_SAMPLER": "always_on"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "false"}, True),
    ],
)
def test_configured_only_by_an_endpoint_and_not_disabled(otel_env, env, expected):
    for name, value in env.items():
        otel_env.setenv(name, value)
    assert tracing.configured() is expected


@pytest.mark.parametrize(
    "role, trace_sql, disabled, expected",
    [
        ("web", False, "", ["django", "redis", "psycopg", "httpx"]),
        ("worker", False, "", ["httpx"]),  # no Redis in a worker, no span per SQL statement unless asked
        ("worker", True, "", ["psycopg", "httpx"]),
        ("web", False, " Redis , psycopg", ["django", "httpx"]),
        ("worker", True, "psycopg,unknown", ["httpx"]),
    ],
)
def test_the_instrumentations_of_each_role(otel_env, settings, role, trace_sql, disabled, expected):
    settings.AIPB_TRACE_SQL = trace_sql
    otel_env.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", disabled)
    assert tracing.instrumentations(role) == expected


def test_off_installs_nothing(otel_env):
    assert tracing.setup(role="worker") is False
    assert not tracing.enabled()
    # the API's default: no SDK provider, spans are non-recording
    assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"
    assert tracing.current_traceparent() == ""
    tracing.flush()  # nothing to flush, nothing raised


def test_an_unsupported_protocol_leaves_tracing_off_with_a_warning(otel_env, caplog):
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with caplog.at_level(logging.WARNING, logger="aipb.tracing"):
        assert tracing.setup(role="web") is False
    assert not tracing.enabled()
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported" in caplog.text


def test_off_does_not_even_import_the_sdk():
    """A process with no endpoint never loads the tracing SDK, an exporter or an instrumentation (their import
    alone is ~0.5 s of CPU). (redis-py loads the SDK's metrics package by itself when it is installed.)"""
    code = (
        "import os, sys\n"
        "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'aipb.settings')\n"
        "import aipb.wsgi\n"
        "from jobs.threaded_worker import AIPBThreadedWorker\n"
        "ours = ('opentelemetry.sdk.trace', 'opentelemetry.instrumentation', 'opentelemetry.exporter')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(ours))\n"
        "print(loaded)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "traceparent, trace_id",
    [
        (PARENT, "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("", ""),
        ("garbage", ""),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", ""),  # the invalid trace id
        ("00-4bf92f35-00f067aa0ba902b7-01", ""),
    ],
)
def test_trace_id_of_a_saved_traceparent(traceparent, trace_id):
    assert tracing.trace_id_of(traceparent) == trace_id


def test_trace_url_only_with_a_template_and_an_id():
    assert tracing.trace_url("abc", "https://tempo.example/trace/{trace_id}") == "https://tempo.example/trace/abc"
    assert tracing.trace_url("abc", "") == ""
    assert tracing.trace_url("", "https://tempo.example/trace/{trace_id}") == ""


def test_a_saved_traceparent_is_continued():
    context = trace.get_current_span(tracing.context_from_traceparent(PARENT)).get_span_context()
    assert context.is_valid and context.is_remote
    assert trace.format_trace_id(context.trace_id) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace.format_span_id(context.span_id) == "00f067aa0ba902b7"
    assert not trace.get_current_span(tracing.context_from_traceparent("")).get_span_context().is_valid
    assert not trace.get_current_span(tracing.context_from_traceparent("nonsense")).get_span_context().is_valid


def test_a_trace_url_template_without_the_placeholder_is_refused():
    code = "import aipb.settings"
    env = {**os.environ, "AIPB_TRACE_URL_TEMPLATE": "https://tempo.example/trace/"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode != 0
    assert ImproperlyConfigured.__name__ in done.stderr and "must contain {trace_id}" in done.stderr


def test_untraced_log_lines_carry_no_trace_ids():
    record = logging.LogRecord("jobs", logging.INFO, __file__, 1, "attempt_ended job_id=x", (), None)
    assert logs.RequestIdFilter().filter(record)
    assert not getattr(record, "trace_id", "") and not getattr(record, "span_id", "")
    assert "trace_id=" not in logs.PlainFormatter().format(record)


def test_trace_ids_on_a_line_in_both_formats():
    record = logging.LogRecord("jobs", logging.INFO, __file__, 1, "attempt_ended job_id=x", (), None)
    record.trace_id, record.span_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    plain = logs.PlainFormatter().format(record)
    assert plain.endswith("attempt_ended job_id=x trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7")
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" and line["span_id"] == "00f067aa0ba902b7"
