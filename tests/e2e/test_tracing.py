"""Tracing across processes: a real gunicorn and a real RQ worker export OTLP/HTTP to a loopback receiver
(tests/fakes/otlp_server.py), configured only by the OTEL_* environment, as a deployment would be.

One trace runs from the POST to every attempt's provider call; a retried job's attempts are spans of that one
trace, the failed one marked as an error; the GenAI span's tokens and cost are the attempt's TokenUsage row; the
prompt is on no span without AIPB_TRACE_CONTENT=1; without an endpoint nothing is sent at all.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest

from jobs.models import AIJob, JobAttempt
from tests.e2e.harness import ALIAS, FORKING, Stack, db_retry, sim_job
from tests.fakes.otlp_server import OTLPReceiver, ReceivedSpan
from usage.models import TokenUsage

pytestmark = pytest.mark.e2e

THREADED = "jobs.threaded_worker.AIPBThreadedWorker"
SECRET = "zebra-quartz-7731"  # in every prompt: must never show up on a span without the opt-in
TRACE_UI = "https://tempo.example/trace/{trace_id}"
LARGE = {"provider": "simulated", "model": "sim-large"}


def otel_env(receiver: OTLPReceiver, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "aipb-drill",
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # export within a fraction of a second, not every 5 s
        "AIPB_TRACE_URL_TEMPLATE": TRACE_UI,
        **extra,
    }


def submit(stack: Stack, key: str, *, fallbacks: list[dict] | None = None, max_attempts=None, **simulate) -> dict:
    spec = sim_job(key, max_attempts=max_attempts, **simulate)
    spec.body["prompt"] = f"A landing page for {SECRET} job {key}"
    if fallbacks is not None:
        spec.body["fallbacks"] = fallbacks
    status, body = stack.client().request("POST", "/api/ai/jobs", spec.body, headers={"Idempotency-Key": key})
    assert status == 201, body
    return body


def all_text(spans: list[ReceivedSpan]) -> str:
    return json.dumps([[s.name, s.attributes, s.events, s.resource] for s in spans], default=str)


def children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return [s for s in spans if s.parent_span_id == parent.span_id]


@pytest.mark.parametrize(
    "worker_class, trace_sql", [(THREADED, True), (FORKING, False)], ids=["threaded-with-sql", "forking"]
)
def test_one_trace_from_the_post_to_each_attempts_provider_call(stack: Stack, worker_class, trace_sql):
    with OTLPReceiver() as otlp:
        env = otel_env(otlp)
        stack.gunicorn(**env)
        worker = stack.worker(worker_class, **env, **({"AIPB_TRACE_SQL": "1"} if trace_sql else {}))
        retried = submit(stack, "unavailable-once", fail_attempts=1, error="unavailable")
        revalidated = submit(stack, "invalid-once", fail_attempts=1, error="invalid_json")
        fell_back = submit(
            stack, "fallback-once", fail_attempts=1, error="unavailable", fallbacks=[LARGE], max_attempts=2
        )
        stack.wait_final(timeout=90)
        stack.scrape()  # Prometheus's scrape: not traced by default

        jobs = {job.id.hex: job for job in db_retry(lambda: list(AIJob.objects.using(ALIAS).all()))}
        assert {job.status for job in jobs.values()} == {"succeeded"}
        for body in (retried, revalidated):
            trace_id = body["trace_id"]
            assert re.fullmatch(r"[0-9a-f]{32}", trace_id) and trace_id != "0" * 32, body
            assert body["trace_url"] == TRACE_UI.replace("{trace_id}", trace_id)
            # the detail page shows the same trace id, read back from the row
            status, detail = stack.client().request("GET", f"/api/ai/jobs/{body['id']}")
            assert status == 200 and detail["trace_id"] == trace_id, detail

            def complete(spans, trace_id=trace_id):
                ours = [s for s in spans if s.trace_id == trace_id]
                attempts = [s for s in ours if s.name == "aipb.attempt"]
                return ours if len(attempts) == 2 and all(children(ours, a) for a in attempts) else None

            spans = otlp.wait_for(complete, timeout=30, what=f"both attempts of job {body['id']} exported")
            job_id = body["id"]
            servers = [s for s in spans if s.kind == "SERVER"]
            assert len(servers) == 1, [(s.name, s.kind) for s in spans]
            server = servers[0]
            assert server.resource["service.name"] == "aipb-drill"
            assert server.resource["aipb.process.role"] == "web"
            assert server.attributes.get("http.request.method", server.attributes.get("http.method")) == "POST"
            assert not server.parent_span_id  # the trace starts at the request
            # the request's SQL: the web process traces every statement
            assert any(s.attributes.get("db.system") == "postgresql" for s in children(spans, server))

            attempts = sorted(
                (s for s in spans if s.name == "aipb.attempt"), key=lambda s: s.attributes["aipb.attempt"]
            )
            assert [a.attributes["aipb.attempt"] for a in attempts] == [1, 2]
            for attempt in attempts:
                assert attempt.parent_span_id == server.span_id  # the context saved with the job at submission
                assert attempt.attributes["aipb.job_id"] == job_id
                assert attempt.resource["aipb.process.role"] == "worker"
            first, second = attempts
            assert first.failed and first.attributes["aipb.outcome"] == "failed"
            assert "aipb.retry_scheduled" in [name for name, _ in first.events]
            assert not second.failed and second.attributes["aipb.outcome"] == "succeeded"
            assert "error.type" not in second.attributes
            assert first.start_ns < first.end_ns <= second.start_ns < second.end_ns

            rows = {
                row.number: row
                for row in db_retry(lambda job_id=job_id: list(JobAttempt.objects.using(ALIAS).filter(job_id=job_id)))
            }
            usage = {
                row.attempt: row
                for row in db_retry(lambda job_id=job_id: list(TokenUsage.objects.using(ALIAS).filter(job_id=job_id)))
            }
            assert first.attributes["error.type"] == rows[1].error_type
            for attempt in attempts:
                number = attempt.attributes["aipb.attempt"]
                steps = {s.name: s for s in children(spans, attempt)}
                call = steps["chat sim-small"]
                assert call.kind == "CLIENT"
                assert call.attributes["gen_ai.operation.name"] == "chat"
                assert call.attributes["gen_ai.provider.name"] == call.attributes["gen_ai.system"] == "simulated"
                assert (
                    call.attributes["gen_ai.request.model"] == call.attributes["gen_ai.response.model"] == "sim-small"
                )
                assert call.attributes.get("gen_ai.response.id", "") == rows[number].provider_request_id
                assert "aipb.record" in steps
                if number in usage:  # the GenAI span's tokens and cost are the usage row's
                    row = usage[number]
                    assert call.attributes["gen_ai.usage.input_tokens"] == row.prompt_tokens > 0
                    assert call.attributes["gen_ai.usage.output_tokens"] == row.completion_tokens > 0
                    assert row.cost is not None and Decimal(str(call.attributes["aipb.cost_usd"])) == row.cost
                    assert "aipb.usage_record" in steps
                else:
                    assert "gen_ai.usage.input_tokens" not in call.attributes
                    assert "aipb.cost_usd" not in call.attributes
                # the recording transaction's statements, from the psycopg instrumentation, only with AIPB_TRACE_SQL
                statements = [s for s in children(spans, steps["aipb.record"]) if s.attributes.get("db.system")]
                assert bool(statements) is trace_sql, [s.name for s in statements]
                assert all(s.attributes["db.system"] == "postgresql" for s in statements)
            if body is retried:
                assert first.attributes["error.type"] == "SERVICE_UNAVAILABLE"
                failed_call = next(s for s in children(spans, first) if s.name == "chat sim-small")
                assert failed_call.failed and failed_call.attributes["error.type"] == "SERVICE_UNAVAILABLE"
                assert 1 not in usage
            else:  # the model answered (billed) with something that was not a page: validation failed
                assert first.attributes["error.type"] == "VALIDATION_ERROR"
                validate = next(s for s in children(spans, first) if s.name == "aipb.validate")
                assert validate.failed
                assert set(usage) == {1, 2}

            # log lines of an attempt carry its trace and span ids
            attempt_lines = [
                line for line in worker.log.read_text().splitlines() if "attempt_ended" in line and job_id in line
            ]
            assert len(attempt_lines) == 2, attempt_lines
            for line, attempt in zip(attempt_lines, attempts, strict=True):
                assert f"trace_id={trace_id}" in line and f"span_id={attempt.span_id}" in line, line

        # routing's decision: the second attempt fell back to sim-large after a provider-side failure on sim-small
        def both_attempts(spans, trace_id=fell_back["trace_id"]):
            ours = [s for s in spans if s.trace_id == trace_id and s.name == "aipb.attempt"]
            return ours if len(ours) == 2 else None

        first, second = sorted(
            otlp.wait_for(both_attempts, timeout=30, what="the fallback job's attempts"),
            key=lambda s: s.attributes["aipb.attempt"],
        )
        assert "aipb.fallback" not in [name for name, _ in first.events]
        fallbacks = [attributes for name, attributes in second.events if name == "aipb.fallback"]
        assert fallbacks == [{"aipb.route.from": "simulated/sim-small", "aipb.route.to": "simulated/sim-large"}]
        calls = [s for s in children(otlp.snapshot(), second) if s.name.startswith("chat ")]
        assert [s.attributes["gen_ai.request.model"] for s in calls] == ["sim-large"]

        otlp.wait_for(
            lambda spans: sum(s.kind == "SERVER" and s.name.startswith("GET api/ai/jobs/") for s in spans) == 2,
            timeout=30,
            what="the detail requests' spans",
        )
        everything = otlp.snapshot()
        assert not [s for s in everything if s.kind == "SERVER" and "metrics" in s.name], "a scrape was traced"
        assert SECRET not in all_text(everything)  # no prompt on any span without the opt-in
        assert not any("gen_ai.input.messages" in s.attributes for s in everything)
        # the web process's Redis commands are traced too (the enqueue)
        assert any(s.attributes.get("db.system") == "redis" for s in everything)
        # a worker's SQL only with AIPB_TRACE_SQL
        worker_sql = [
            s for s in everything if s.resource.get("aipb.process.role") == "worker" and "db.system" in s.attributes
        ]
        assert bool(worker_sql) is trace_sql, [s.name for s in worker_sql]


def test_prompt_and_page_on_spans_only_with_the_opt_in(stack: Stack):
    with OTLPReceiver() as otlp:
        env = otel_env(otlp, AIPB_TRACE_CONTENT="1")
        stack.gunicorn(**env)
        stack.worker(THREADED, **env)
        body = submit(stack, "content")
        stack.wait_final(timeout=60)
        call = otlp.wait_for(
            lambda spans: next((s for s in spans if s.name == "chat sim-small"), None), timeout=30, what="the call"
        )
        assert call.trace_id == body["trace_id"]
        (message,) = json.loads(call.attributes["gen_ai.input.messages"])
        assert message["role"] == "user" and SECRET in message["parts"][0]["content"]
        (answer,) = json.loads(call.attributes["gen_ai.output.messages"])
        job = db_retry(lambda: AIJob.objects.using(ALIAS).get(id=body["id"]))
        assert json.loads(answer["parts"][0]["content"]) == job.result


@pytest.mark.parametrize("switch", ["no-endpoint", "sdk-disabled"])
def test_nothing_is_traced_or_exported_when_off(stack: Stack, switch):
    with OTLPReceiver() as otlp:
        # everything a deployment might set; then either no endpoint, or the endpoint and OTEL_SDK_DISABLED
        env = {"OTEL_SERVICE_NAME": "aipb-drill", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
        if switch == "sdk-disabled":
            env.update(OTEL_EXPORTER_OTLP_ENDPOINT=otlp.endpoint, OTEL_SDK_DISABLED="true")
        web = stack.gunicorn(**env)
        worker = stack.worker(FORKING, **env)
        body = submit(stack, "untraced", fail_attempts=1, error="unavailable")
        stack.wait_final(timeout=60)
        job = db_retry(lambda: AIJob.objects.using(ALIAS).get(id=body["id"]))
        assert job.status == "succeeded" and job.attempts == 2
        # no tracer in the web process: the job saved no trace context
        assert body["trace_id"] == "" and body["trace_url"] == "" and job.traceparent == ""
        # none in the worker: its attempt lines carry no trace id
        lines = [line for line in worker.log.read_text().splitlines() if "attempt_ended" in line]
        assert len(lines) == 2 and not any("trace_id=" in line for line in lines), lines
        stack.stop(web)  # processes exiting would flush whatever a tracer had buffered
        stack.stop(worker)
        assert otlp.requests == 0
