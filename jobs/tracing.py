"""A job's spans: every attempt an ``aipb.attempt`` span continuing the trace saved with the job at submission
(AIJob.traceparent: it survives Redis loss, reconcile and DLQ retries), the provider call a GenAI client span
(OpenTelemetry GenAI semantic conventions), validation and the recording transactions as child spans.

The pipeline wraps its existing steps in these; with tracing off (aipb.tracing.enabled() false) every helper is
the one shared no-op object, so an untraced attempt builds no span, context or attribute.

Content (the prompt, the model's page) goes on a span only with AIPB_TRACE_CONTENT=1; keys never do (the HTTP
instrumentation records no headers).
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from functools import cache

from django.conf import settings
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from aipb import tracing

_NULL = nullcontext()

# gen_ai.provider.name values from the semantic conventions; ours (local, simulated) keep their ids
GEN_AI_PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini"}


@cache
def _tracer() -> trace.Tracer:
    # asked only once tracing is on (every caller checks first), so the cached tracer is the SDK's
    return tracing.tracer("aipb.jobs")


def submission_traceparent() -> str:
    """What a new job saves: the trace context of the request (or command) creating it."""
    return tracing.current_traceparent()


class _NoAttempt:
    """The attempt of an untraced process: does nothing, costs one method call a step."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def call(self, *, provider: str, model: str, prompt: str):
        return _NULL

    def step(self, name: str):
        return _NULL

    def routed(self, route) -> None:
        pass

    def call_ended(self, **kwargs) -> None:
        pass

    def ended(self, **kwargs) -> None:
        pass


NO_ATTEMPT = _NoAttempt()


class _Call:
    """The provider call's span: current while the call runs (the HTTP client's spans are its children), ended
    at the call's end once its usage and cost are known (they are recorded after the call)."""

    def __init__(self, span: trace.Span, model: str) -> None:
        self.span = span
        self.model = model  # the routed target's: a fallback's, not the job's
        self.end_ns: int | None = None
        self.failed = False
        self._use = trace.use_span(span, end_on_exit=False)

    def __enter__(self):
        self._use.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.end_ns = time.time_ns()
        self.failed = exc is not None
        if exc is not None:
            self.span.record_exception(exc)
        self._use.__exit__(None, None, None)  # the exception is the attempt's to classify, not ours to record twice
        return None


class AttemptTrace:
    """One attempt's spans. Use as a context manager around the attempt; ``ended`` says how it ended."""

    def __init__(self, *, job, start_ns: int) -> None:
        self.job = job
        self.span = _tracer().start_span(
            "aipb.attempt",
            context=tracing.context_from_traceparent(job.traceparent),
            kind=SpanKind.INTERNAL,
            start_time=start_ns,
            attributes={
                "aipb.job_id": str(job.id),
                "aipb.attempt": job.attempts,
                "aipb.provider": job.provider,
                "aipb.model": job.model,
                "aipb.priority": job.priority,
            },
        )
        self._use = trace.use_span(self.span, end_on_exit=True, record_exception=True, set_status_on_exception=True)
        self._call: _Call | None = None
        self._content = settings.AIPB_TRACE_CONTENT

    def __enter__(self):
        self._use.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._call is not None and self._call.span.is_recording():  # the attempt ended before call_ended
            self._call.span.end(end_time=self._call.end_ns)
        return self._use.__exit__(exc_type, exc, tb)

    def call(self, *, provider: str, model: str, prompt: str) -> _Call:
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": GEN_AI_PROVIDER_NAMES.get(provider, provider),
            "gen_ai.system": GEN_AI_PROVIDER_NAMES.get(provider, provider),
            "gen_ai.request.model": model,
        }
        if self._content:
            attributes["gen_ai.input.messages"] = _messages("user", prompt)
        span = _tracer().start_span(f"chat {model}", kind=SpanKind.CLIENT, attributes=attributes)
        self._call = _Call(span, model)
        return self._call

    def step(self, name: str):
        return _tracer().start_as_current_span(name)

    def routed(self, route) -> None:
        """Routing's decision (a jobs.routing.chains.Route), as events on the attempt's span: a fallback from the
        job's own target (its circuit open, or this job's last attempt failed there), a half-open circuit's probe."""
        if route.fallback:
            self.span.add_event(
                "aipb.fallback", {"aipb.route.from": str(route.primary), "aipb.route.to": str(route.target)}
            )
        if route.probe:
            self.span.add_event("aipb.circuit.probe", {"aipb.route.target": str(route.target)})

    def call_ended(self, *, response, usage, request_id: str | None, cost, error_type: str | None) -> None:
        """The call's outcome, usage and cost onto its span, which ends when the call did."""
        call = self._call
        if call is None:
            return
        span = call.span
        span.set_attribute("gen_ai.response.model", call.model)  # providers report no model of their own
        if request_id:
            span.set_attribute("gen_ai.response.id", request_id)
        if usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
            if usage.cached_tokens:
                span.set_attribute("gen_ai.usage.cache_read.input_tokens", usage.cached_tokens)
        if cost is not None:
            # an attribute is a number or a string: the Decimal's exact value as a float, for backends to sum
            span.set_attribute("aipb.cost_usd", float(cost))
        if self._content and response is not None:
            span.set_attribute("gen_ai.output.messages", _messages("assistant", response.text))
        if call.failed and error_type:
            span.set_attribute("error.type", str(error_type))
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=call.end_ns)

    def ended(self, *, outcome: str | None, status: str | None, error_type: str | None, delay: float | None) -> None:
        """How the attempt ended: outcome (None: lease recovery had taken the job back), the job's new state."""
        span = self.span
        span.set_attribute("aipb.outcome", outcome or "abandoned")
        if status:
            span.set_attribute("aipb.job.status", status)
        if delay is not None:
            span.add_event("aipb.retry_scheduled", {"aipb.retry.delay_seconds": delay})
        if error_type:
            span.set_attribute("error.type", str(error_type))
            span.set_status(Status(StatusCode.ERROR, str(error_type)))


def attempt(*, job, start_ns: int) -> AttemptTrace | _NoAttempt:
    """The attempt's spans (start_ns: when the delivery began, before the rate limit and the claim)."""
    if not tracing.enabled():
        return NO_ATTEMPT
    return AttemptTrace(job=job, start_ns=start_ns)


def throttled(*, job, wait_seconds: float, delay: float) -> None:
    """A delivery handed back for want of a rate-limit token: no attempt, an event on a short span of the trace."""
    _waited(job, "aipb.throttled", "aipb.rate_limit.wait", wait_seconds=wait_seconds, delay=delay)


def circuit_waited(*, job, wait_seconds: float, delay: float) -> None:
    """A delivery handed back because every target of its job's chain has its circuit open: no attempt, an event on
    a short span of the trace."""
    _waited(job, "aipb.circuit_wait", "aipb.circuit.open", wait_seconds=wait_seconds, delay=delay)


def _waited(job, name: str, event: str, *, wait_seconds: float, delay: float) -> None:
    if not tracing.enabled():
        return
    span = _tracer().start_span(
        name,
        context=tracing.context_from_traceparent(job.traceparent),
        attributes={"aipb.job_id": str(job.id), "aipb.provider": job.provider},
    )
    span.add_event(event, {"aipb.wait_seconds": wait_seconds, "aipb.retry.delay_seconds": delay})
    span.end()


def _messages(role: str, text: str) -> str:
    return json.dumps([{"role": role, "parts": [{"type": "text", "content": text}]}], ensure_ascii=False)
