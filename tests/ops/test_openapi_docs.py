"""The OpenAPI document: every operation has a summary, a description and an example (DELETE's answer has no
body: it is checked for the summary and description); a job's `result` is typed as the page schema and its
`options` as what the providers read; drf-spectacular finds nothing to warn about."""

from __future__ import annotations

import pytest
import yaml
from django.core.management import call_command

from jobs.schema import PAGE_SCHEMA
from monitoring.apis import EXAMPLE
from monitoring.timeseries import stats_timeseries

pytestmark = pytest.mark.django_db

DOCUMENTED = {
    "/api/ai/batches": ["get", "post"],
    "/api/ai/batches/{batch_id}": ["get"],
    "/api/ai/batches/{batch_id}/jobs": ["get"],
    "/api/ai/batches/{batch_id}/cancel": ["post"],
    "/api/ai/dlq": ["get"],
    "/api/ai/dlq/stats": ["get"],
    "/api/ai/dlq/retry": ["post"],
    "/api/ai/dlq/{entry_id}/retry": ["post"],
    "/api/ai/dlq/{entry_id}/discard": ["post"],
    "/api/ai/usage/report": ["get"],
    "/api/ai/usage/current-month": ["get"],
    "/api/ai/usage/last-n-days": ["get"],
    "/api/ai/usage/budget": ["get"],
    "/api/ai/usage/prices": ["get"],
    "/api/ai/providers": ["get"],
    "/api/ai/jobs/metrics": ["get"],
    "/api/ai/queue": ["get"],
    "/api/ai/queue/pause": ["post"],
    "/api/ai/queue/resume": ["post"],
    "/api/ai/queue/intake": ["post"],
    "/api/ai/stats/timeseries": ["get"],
    "/api/ai/jobs": ["get", "post"],
    "/api/ai/jobs/{job_id}": ["get"],
    "/api/ai/jobs/{job_id}/retry": ["post"],
    "/api/ai/jobs/{job_id}/cancel": ["post"],
    "/api/ai/schedules": ["get", "post"],
    "/api/ai/schedules/{schedule_id}": ["get"],
    "/api/version": ["get"],
    "/api/auth/token": ["post"],
    "/api/ai/webhooks/secret": ["post"],
    "/api/ai/webhooks/deliveries": ["get"],
    "/api/ai/webhooks/deliveries/{delivery_id}/resend": ["post"],
}


@pytest.fixture(scope="module")
def schema(django_db_setup, django_db_blocker, tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("openapi") / "schema.yml"
    with django_db_blocker.unblock():
        # --fail-on-warn: a component name used twice, an unresolvable type, ... fail here
        call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(path))
    return yaml.safe_load(path.read_text())


def examples_of(operation: dict) -> list:
    bodies = [operation.get("requestBody", {}), *operation["responses"].values()]
    return [example for body in bodies for content in (body.get("content") or {}).values()
            for example in (content.get("examples") or {}).values()]  # fmt: skip


def test_every_operation_is_documented(schema):
    served = {(path, method) for path, item in schema["paths"].items() for method in item if method != "parameters"}
    listed = {(path, method) for path, methods in DOCUMENTED.items() for method in methods}
    deletes = {("/api/ai/jobs/{job_id}", "delete"), ("/api/ai/schedules/{schedule_id}", "delete")}
    assert served - listed == deletes, sorted(served - listed)
    for path, method in deletes:
        delete = schema["paths"][path][method]
        assert delete.get("summary") and len(delete.get("description", "")) >= 40


@pytest.mark.parametrize(("path", "method"), [(p, m) for p, methods in DOCUMENTED.items() for m in methods])
def test_each_operation_has_a_summary_a_description_and_an_example(schema, path, method):
    operation = schema["paths"][path][method]
    assert operation.get("summary", "").strip(), (path, method)
    assert len(operation.get("description", "")) >= 40, (path, method)
    assert examples_of(operation), (path, method)
    success = [code for code in operation["responses"] if code.startswith("2")]
    content = operation["responses"][success[0]].get("content", {})
    assert any("examples" in c for c in content.values()), f"{path} {method}: no example of its answer"


def test_result_is_the_page_schema_and_options_are_typed(schema):
    job = schema["components"]["schemas"]["JobOutput"]["properties"]
    result = job["result"]
    assert result["nullable"] is True and result["required"] == PAGE_SCHEMA["required"]
    blocks = result["properties"]["sections"]["items"]["anyOf"]
    assert len(blocks) == len(PAGE_SCHEMA["$defs"]) and "$ref" not in str(result)
    assert {b["properties"]["type"]["enum"][0] for b in blocks} == set(PAGE_SCHEMA["$defs"])
    options = schema["components"]["schemas"]["JobSummary"]["properties"]["options"]
    assert set(options["properties"]) == {"max_tokens", "temperature", "simulate"}
    assert options["properties"]["simulate"]["properties"]["error"]["enum"][0] == "rate_limit"


def test_the_timeseries_example_has_the_keys_of_a_real_answer():
    real = stats_timeseries(window="1h")
    assert set(EXAMPLE) == set(real)
    for key in ("jobs", "latency_ms", "queue", "current", "totals"):
        assert set(EXAMPLE[key]) == set(real[key]), key
