"""OpenTelemetry tracing, configured only by the standard ``OTEL_*`` environment variables.

Off unless an OTLP endpoint is set (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``) and
``OTEL_SDK_DISABLED`` is not true. Off means nothing is installed: no tracer provider, no instrumentation, no
thread; the OpenTelemetry API then hands out non-recording spans, and our own helpers (``enabled()``) skip even
those. On, each process (a gunicorn worker, an RQ worker) installs one SDK tracer provider exporting OTLP/HTTP
through a BatchSpanProcessor, and the official Django, psycopg, redis and httpx2 instrumentations (the provider SDKs
talk HTTP through httpx2). The SDK reads the rest itself: ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``/``_ARG``, ``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_BSP_*``.

Forks: the SDK's BatchSpanProcessor restarts its export thread in a forked child (os.register_at_fork), so a
provider installed before gunicorn or RQ forks keeps working in the child; a child that leaves with ``os._exit``
(an RQ work-horse) must call ``flush()`` first or its last spans are lost.
"""

from __future__ import annotations

import logging
import os
import threading

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

SUPPORTED_PROTOCOLS = ("http/protobuf",)
DEFAULT_EXCLUDED_URLS = r"^https?://[^/]+/metrics$"  # Prometheus scrapes; not /api/ai/jobs/metrics
_propagator = TraceContextTextMapPropagator()
_lock = threading.Lock()
_provider = None  # the SDK TracerProvider this process installed, when tracing is on
_sql_traced = False  # the psycopg instrumentation is installed (sql_traced)


def configured() -> bool:
    """Does the environment ask for tracing? (Read at setup; the answer is fixed for the process's life.)"""
    if os.getenv("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    endpoint = os.getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    return bool(endpoint or os.getenv("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip())


def sql_traced() -> bool:
    """Does this process trace its SQL (the psycopg instrumentation)? It traces the cursors psycopg's connection
    makes, which aipb.prepared's are not: a process that traces SQL does not prepare."""
    return _sql_traced


def enabled() -> bool:
    """Is a tracer provider installed in this process? The hot path asks this before building any span."""
    return _provider is not None


def setup(*, role: str) -> bool:
    """Install tracing for this process when the environment asks for it; once per process, idempotent.

    ``role`` (``web``, ``worker``) becomes the resource attribute ``aipb.process.role``; ``OTEL_SERVICE_NAME``
    defaults to ``aipb``. Returns whether tracing is on.
    """
    global _provider
    if _provider is not None or not configured():
        return _provider is not None
    with _lock:
        if _provider is not None:
            return True
        protocol = os.getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "").strip()
        protocol = protocol or os.getenv("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip() or "http/protobuf"
        if protocol not in SUPPORTED_PROTOCOLS:
            log.warning(
                "tracing off: OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported (only %s)",
                protocol,
                ", ".join(SUPPORTED_PROTOCOLS),
            )
            return False
        _provider = _install(role)
    log.info("tracing on: exporting OTLP/HTTP spans (%s)", role)
    return True


def _install(role: str):
    # The SDK and the instrumentations are imported only when tracing is on: off costs not even their import.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPX2ClientInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import Decision, SamplingResult

    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME, which win over these defaults.
    defaults = {"aipb.process.role": role}
    if not os.getenv("OTEL_SERVICE_NAME", "").strip():
        defaults[SERVICE_NAME] = "aipb"
    provider = TracerProvider(resource=Resource.create(defaults))  # the sampler from OTEL_TRACES_SAMPLER
    provider.sampler = _NoOrphanClientSpans(provider.sampler, drop=SamplingResult(Decision.DROP))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # endpoint, headers from OTEL_EXPORTER_*
    trace.set_tracer_provider(provider)
    wanted = instrumentations(role)
    if "django" in wanted:
        # adds its middleware: before the WSGI handler loads the middleware. Prometheus's scrapes are no one's
        # request worth a trace, unless OTEL_PYTHON_DJANGO_EXCLUDED_URLS says otherwise.
        excluded = None if os.getenv("OTEL_PYTHON_DJANGO_EXCLUDED_URLS", "").strip() else DEFAULT_EXCLUDED_URLS
        DjangoInstrumentor().instrument(excluded_urls=excluded)
    if "redis" in wanted:
        RedisInstrumentor().instrument()
    if "psycopg" in wanted:
        global _sql_traced
        PsycopgInstrumentor().instrument(enable_commenter=False)
        _sql_traced = True
    if "httpx" in wanted:
        HTTPX2ClientInstrumentor().instrument()
    return provider


# The official instrumentations each role installs, by the names OTEL_PYTHON_DISABLED_INSTRUMENTATIONS uses.
# Redis in the web process only: a worker's commands are RQ's loop and bookkeeping and the rate limiter, outside
# any attempt's span, so _NoOrphanClientSpans would drop every one after the instrumentation's work
# (bench.pipeline --tracing: a tenth of the worker's tracing cost, for no span).
# psycopg in a worker only with AIPB_TRACE_SQL: a span per SQL statement of an attempt (about five) cost as much
# as all of the attempt's own spans together (bench.pipeline --tracing, 2026-12-03: +26 % worker CPU per job
# with them, +11 % without), and told little that aipb.record and aipb.usage_record, the transactions they run
# in, do not.
INSTRUMENTATIONS = {"web": ("django", "redis", "psycopg", "httpx"), "worker": ("psycopg", "httpx")}


def instrumentations(role: str) -> list[str]:
    """The instrumentations a process of this role installs: its role's (a worker's psycopg only with
    AIPB_TRACE_SQL), less those named (comma-separated) in OTEL_PYTHON_DISABLED_INSTRUMENTATIONS, the standard
    variable of OpenTelemetry's Python distribution."""
    from django.conf import settings

    disabled = {name.strip().lower() for name in os.getenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
    if role == "worker" and not settings.AIPB_TRACE_SQL:
        disabled.add("psycopg")
    return [name for name in INSTRUMENTATIONS[role] if name not in disabled]


class _NoOrphanClientSpans:
    """The sampler OTEL_TRACES_SAMPLER configured, except that a client span starting a trace is dropped: a Redis
    or SQL command outside any request or attempt (a worker's BLPOP every few seconds, its heartbeats, RQ's
    scheduler) would otherwise be a one-span trace, several a second per idle worker, telling nobody anything."""

    def __init__(self, inner, *, drop) -> None:
        self.inner = inner
        self.drop = drop  # SamplingResult(Decision.DROP)

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        if kind == trace.SpanKind.CLIENT and not trace.get_current_span(parent_context).get_span_context().is_valid:
            return self.drop
        return self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"NoOrphanClientSpans{{{self.inner.get_description()}}}"


def flush(timeout_millis: int = 5000) -> None:
    """Export what is buffered now: before a process leaves with os._exit (an RQ work-horse)."""
    if _provider is not None:
        _provider.force_flush(timeout_millis)


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def current_traceparent() -> str:
    """The W3C traceparent of the current span ('' when tracing is off or nothing is being traced)."""
    if _provider is None:
        return ""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent", "")


def context_from_traceparent(traceparent: str):
    """The OpenTelemetry context a saved traceparent continues (an empty context for '' or a malformed one)."""
    return _propagator.extract({"traceparent": traceparent} if traceparent else {})


def trace_id_of(traceparent: str) -> str:
    """The 32-hex trace id in a W3C traceparent (``00-<trace id>-<span id>-<flags>``), '' when there is none."""
    parts = traceparent.split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or parts[1] == "0" * 32:
        return ""
    return parts[1]


def trace_url(trace_id: str, template: str) -> str:
    """A trace's link in the operators' tracing UI (``AIPB_TRACE_URL_TEMPLATE``), '' without a template or id."""
    if not trace_id or not template:
        return ""
    return template.replace("{trace_id}", trace_id)
