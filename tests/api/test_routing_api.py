"""The routing fields of the jobs API (fallbacks, routing_policy, served_by) and the providers API's health."""

from __future__ import annotations

import pytest

from jobs.errors import Classified, ErrorType
from jobs.models import AIJob
from jobs.routing import circuits
from jobs.routing.circuits import Target

pytestmark = pytest.mark.django_db(transaction=True)

JOBS = "/api/ai/jobs"
PROVIDERS = "/api/ai/providers"
SIM = {"prompt": "x", "provider": "simulated", "model": "sim-small"}
LARGE = {"provider": "simulated", "model": "sim-large"}


def assert_error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "details"}, body
    return body["error"]


def test_a_job_with_fallbacks_and_a_policy_shows_them(api, redis_conn):
    response = api.post(JOBS, {**SIM, "fallbacks": [LARGE], "routing_policy": "cheapest"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["fallbacks"] == [LARGE] and body["routing_policy"] == "cheapest" and body["served_by"] is None
    default = api.post(JOBS, SIM, format="json").json()
    assert default["fallbacks"] is None and default["routing_policy"] == "ordered"


@pytest.mark.parametrize(
    "fallbacks,policy",
    [
        ([{"provider": "nope", "model": "sim-large"}], None),  # unknown provider
        ([{"provider": "simulated", "model": "sim-huge"}], None),  # unknown model
        ([{"provider": "openai", "model": "gpt-4o-mini"}], None),  # provider without a key here
        ([{"provider": "simulated"}], None),  # no model
        ([{**LARGE, "weight": 2}], None),  # a field that is not ours
        ([{"provider": "simulated", "model": 7}], None),  # not a string
        (["simulated:sim-large"], None),  # not an object
        ([LARGE, LARGE], None),  # twice
        ([{"provider": "simulated", "model": "sim-small"}], None),  # the job's own target
        ([LARGE] * 6, None),  # too many
        ("simulated:sim-large", None),  # not a list
        ([LARGE], "random"),  # unknown policy
        ([LARGE], ""),
    ],
)
def test_bad_fallbacks_or_policy_are_a_400_and_write_nothing(api, redis_conn, settings, fallbacks, policy):
    settings.OPENAI_API_KEY = ""
    body = {**SIM, "fallbacks": fallbacks}
    if policy is not None:
        body["routing_policy"] = policy
    error = assert_error(api.post(JOBS, body, format="json"), 400)
    assert error["message"]
    assert not AIJob.objects.exists()


def test_unauthenticated_submission_with_fallbacks_is_refused_and_writes_nothing(anon_api, redis_conn):
    response = anon_api.post(JOBS, {**SIM, "fallbacks": [LARGE]}, format="json")
    assert response.status_code in (401, 403)
    assert not AIJob.objects.exists()


def _models(response) -> dict[tuple[str, str], dict]:
    assert response.status_code == 200, response.content
    return {(p["id"], m["name"]): m for p in response.json() for m in p["models"]}


def test_providers_show_each_models_circuit_and_staff_see_its_health(api, staff_api, redis_conn, settings):
    settings.AI_CIRCUIT_FAILURE_THRESHOLD = 2
    down = Classified(type=ErrorType.SERVICE_UNAVAILABLE, retryable=True, message="down")
    circuits.report(Target("simulated", "sim-large"), error=None, latency_ms=120)
    for _ in range(2):
        circuits.report(Target("simulated", "sim-small"), error=down, latency_ms=30)
    circuits.probe_record(Target("simulated", "sim-large"), ok=True, latency_ms=15)

    seen = _models(api.get(PROVIDERS))
    assert seen[("simulated", "sim-small")] == {**seen[("simulated", "sim-small")], "circuit": "open"}
    assert seen[("simulated", "sim-large")]["circuit"] == "closed"
    assert "p50_latency_ms" not in seen[("simulated", "sim-small")]  # not for everyone

    staff = _models(staff_api.get(PROVIDERS))
    small, large = staff[("simulated", "sim-small")], staff[("simulated", "sim-large")]
    assert (small["circuit"], small["error_rate"], small["p50_latency_ms"]) == ("open", 1.0, None)
    assert (large["circuit"], large["p50_latency_ms"], large["error_rate"]) == ("closed", 120, 0.0)
    assert large["last_probe_at"].endswith("Z") and small["last_probe_at"] is None
    assert staff[("local", "local-page")] == {**staff[("local", "local-page")], "circuit": "closed", "error_rate": None}


def test_providers_need_authentication(anon_api, redis_conn):
    assert anon_api.get(PROVIDERS).status_code in (401, 403)
