"""Schemathesis against /api/schema/: every operation, as a normal user and as staff, in process
against the WSGI app. No 5xx, every response matches the schema (status code, content type, headers,
body), every rejection has the one error shape.

Bounded and deterministic: a few examples per operation, derandomized, no example database, so CI
sees the same cases every run. (The schema is loaded when the module is collected:
``schemathesis.pytest.from_fixture`` does not work with pytest 9.)
"""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from aipb.wsgi import application
from tests.security.conftest import auth_header

pytestmark = pytest.mark.django_db(transaction=True)

MAX_EXAMPLES = 25

schema = schemathesis.openapi.from_wsgi("/api/schema/", application)
# Every text field refuses NUL with a 400 (DRF's ProhibitNullCharactersValidator; PostgreSQL cannot store
# it), which OpenAPI cannot say short of a pattern on every string: don't offer NUL as valid data.
# test_limits proves the 400s.
schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True, allow_x00=False)
# The schema's examples are documentation (tests/ops/test_openapi_docs.py checks they are there); schemathesis
# cannot run them with the `pick` strategy below (it refuses `given` with schema examples), so it generates only.
schema.config.phases.examples.enabled = False


def _error_shape(ctx, response, case) -> bool | None:
    """Every 4xx/5xx from /api/ is {"error": {"type", "message", "details"}} and nothing else."""
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.content[:200]!r}") from None
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"type", "message", "details"}, body
    assert isinstance(error["type"], str) and error["type"], body
    assert isinstance(error["message"], str) and error["message"], body
    return True


FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

# Random UUIDs and ids only reach the 404 branch: half the time, use a real object of A's or B's instead.
PICK = st.one_of(st.none(), st.integers(min_value=0, max_value=3))


# Operations where a request the schema allows can still be refused with a 400 for a reason a schema
# cannot express: a model the provider does not have, a provider without a key, a whitespace-only
# prompt, options nested too deep (jobs); wrong credentials (token); start after end, a range over
# the limit, an unknown user (usage); an unparseable `since` (metrics). The 400 must still have the
# error shape; only schemathesis's "valid data is accepted" check is off for them.
SEMANTIC_400 = {
    ("POST", "/api/ai/jobs"),
    ("POST", "/api/ai/batches"),  # each of its jobs as the jobs'
    ("POST", "/api/ai/schedules"),  # its job as the jobs', and a cron expression or time zone that does not parse
    ("POST", "/api/auth/token"),
    ("GET", "/api/ai/jobs/metrics"),
    ("GET", "/api/ai/usage/report"),
    ("GET", "/api/ai/usage/current-month"),
    ("GET", "/api/ai/usage/last-n-days"),
}


def call_and_check(case, world, pick: int | None, headers: dict[str, str]) -> None:
    if pick is not None and case.path_parameters:
        owned = (world.a, world.b)[pick % 2]
        if "job_id" in case.path_parameters:
            case.path_parameters["job_id"] = str(owned.jobs[pick // 2].id)
        if "entry_id" in case.path_parameters:
            case.path_parameters["entry_id"] = owned.dead_letter.id
    excluded = [positive_data_acceptance] if (case.method.upper(), case.path) in SEMANTIC_400 else []
    response = case.call(headers=headers)
    case.validate_response(response, headers=headers, additional_checks=[_error_shape], excluded_checks=excluded)


@schema.parametrize()
@schema.given(pick=PICK)
@FUZZ_SETTINGS
def test_every_operation_as_a_user(case, pick, world, user):
    call_and_check(case, world, pick, auth_header(user))


@schema.parametrize()
@schema.given(pick=PICK)
@FUZZ_SETTINGS
def test_every_operation_as_staff(case, pick, world, staff_user):
    call_and_check(case, world, pick, auth_header(staff_user))
