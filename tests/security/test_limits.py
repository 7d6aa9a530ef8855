"""Limits: body size, prompt length, options depth and size, page sizes, the submission throttle (shared
by every web process), and hostile filter values — each a 4xx with the error shape (or an empty
answer), never a 500, and a refused request changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from urllib.parse import urlencode

import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from dlq.models import DeadLetter
from jobs.models import AIJob
from tests.ops.conftest import BASE_DIR, child_env
from tests.security.conftest import token_client

JOBS = "/api/ai/jobs"
SIM = {"provider": "simulated", "model": "sim-small"}


def error_of(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:500])
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "details"}, body
    return body["error"]


def nested(depth: int) -> dict:
    """An options object nested ``depth`` levels deep: {"a": {"a": ... 1}}."""
    value: object = 1
    for _ in range(depth):
        value = {"a": value}
    return value


# --- request body size ---

POST_ROUTES = [
    JOBS,
    "/api/ai/dlq/retry",
    "/api/ai/queue/pause",
    "/api/ai/queue/resume",
    "/api/auth/token",
    "/api/ai/jobs/00000000-0000-0000-0000-000000000000/cancel",
    "/api/no-such-endpoint",
]


@pytest.mark.parametrize("path", POST_ROUTES)
def test_a_body_over_the_limit_is_413_on_every_api_route(path, staff_user, redis_conn):
    limit = django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    body = json.dumps({"prompt": "x" * limit, **SIM})
    before = AIJob.objects.count()

    response = token_client(staff_user).generic("POST", path, body, content_type="application/json")

    error = error_of(response, 413)
    assert error["type"] == "request_too_large" and error["details"] == {"limit": limit}
    assert AIJob.objects.count() == before and redis_conn.dbsize() == 0


def test_a_body_just_under_the_limit_is_read(user, redis_conn):
    limit = django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    filler = "y" * (limit - 200)
    body = json.dumps({"prompt": "A page", "options": {"blob": filler}, **SIM})
    assert len(body) <= limit

    response = token_client(user).generic("POST", JOBS, body, content_type="application/json")

    # read and judged: the options are too big for a job (16 KiB), not too big for the server
    assert "16384 bytes" in error_of(response, 400)["message"]


def test_a_content_length_that_is_not_a_number_is_400(user):
    response = token_client(user).generic("POST", JOBS, b"{}", content_type="application/json", CONTENT_LENGTH="12x")
    assert error_of(response, 400)["message"] == "Content-Length is not a number"


# --- prompt, options ---


def test_prompt_length_is_counted_in_characters(user, redis_conn):
    client = token_client(user)
    ok = client.post(JOBS, {"prompt": "é" * 20_000, **SIM}, format="json")  # 40,000 bytes of UTF-8
    assert ok.status_code == 201
    too_long = client.post(JOBS, {"prompt": "é" * 20_001, **SIM}, format="json")
    assert "20000" in error_of(too_long, 400)["message"]
    assert AIJob.objects.count() == 1


def test_options_depth_and_size(user, redis_conn):
    client = token_client(user)

    def submit(options):
        return client.post(JOBS, {"prompt": "p", "options": options, **SIM}, format="json")

    assert submit(nested(5)).status_code == 201
    assert "nest" in error_of(submit(nested(6)), 400)["message"]
    at_limit = {"blob": "z" * (django_settings.AI_MAX_OPTIONS_BYTES - len('{"blob": ""}'))}
    assert len(json.dumps(at_limit)) == django_settings.AI_MAX_OPTIONS_BYTES
    assert submit(at_limit).status_code == 201
    assert "bytes" in error_of(submit({"blob": at_limit["blob"] + "z"}), 400)["message"]
    assert AIJob.objects.count() == 2


@pytest.mark.parametrize("depth", [50, 900, 990, 2_000, 200_000])
def test_json_nested_past_any_limit_is_400_not_a_crash(depth, user, redis_conn):
    """200,000 levels is 400 KB, under the body limit: the parser must refuse it, not recurse until it dies."""
    body = '{"prompt": "p", "provider": "simulated", "model": "sim-small", "options": {"a": ' + "[" * depth
    body += "]" * depth + "}}"

    response = token_client(user).generic("POST", JOBS, body, content_type="application/json")

    error_of(response, 400)
    assert AIJob.objects.count() == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ('{"a": "nul \\u0000 inside"}', "NUL"),  # PostgreSQL's jsonb cannot store \u0000
        ('{"nul\\u0000key": 1}', "NUL"),
        ('{"a": ["x", {"b": "\\u0000"}]}', "NUL"),
        ('{"a": "\\ud800"}', "surrogate"),  # a lone surrogate: not UTF-8, not storable
        ('{"\\udfff": 1}', "surrogate"),
        ('{"n": 1e400}', "finite"),  # valid JSON; Python reads inf; jsonb refuses Infinity
        ('{"n": [1, -1e999]}', "finite"),
        ('{"n": NaN}', "parse"),  # not JSON at all
    ],
    ids=["nul", "nul-key", "nul-nested", "surrogate", "surrogate-key", "overflow", "overflow-nested", "nan"],
)
def test_options_the_database_cannot_store_are_400(options, message, user, redis_conn):
    body = '{"prompt": "p", "provider": "simulated", "model": "sim-small", "options": ' + options + "}"
    response = token_client(user).generic("POST", JOBS, body, content_type="application/json")
    assert message.lower() in error_of(response, 400)["message"].lower()
    assert AIJob.objects.count() == 0


def test_a_huge_integer_in_options_is_stored_as_sent(user, redis_conn):
    body = '{"prompt": "p", "provider": "simulated", "model": "sim-small", "options": {"n": 1' + "0" * 400 + "}}"
    response = token_client(user).generic("POST", JOBS, body, content_type="application/json")
    assert response.status_code == 201
    assert AIJob.objects.get().options == {"n": 10**400}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        (JOBS, '{"prompt": "a lone \\ud800 surrogate", "provider": "simulated", "model": "sim-small"}', "prompt"),
        (JOBS, '{"prompt": "p", "provider": "simulated", "model": "\\udfff"}', "model"),
        ("/api/ai/dlq/retry", '{"model": "\\ud800"}', "model"),
        ("/api/ai/queue/pause", '{"reason": "deploy \\ud800"}', "reason"),
        ("/api/ai/queue/pause", '{"reason": "' + "\\u0085" * 501 + '"}', "reason"),  # 501 chars, all whitespace
        ("/api/ai/queue/pause", '{"reason": 500}', "reason"),
        ("/api/ai/dlq/retry", '{"retryable": "yes"}', "retryable"),
        ("/api/ai/dlq/retry", '{"error_type": ["AUTH_ERROR"]}', "error_type"),
        (JOBS, '{"prompt": "p", "provider": "simulated", "model": "sim-small", "priority": 1}', "priority"),
        (JOBS, '{"prompt": "p", "provider": "simulated", "model": "sim-small", "max_attempts": "2"}', "max_attempts"),
        (JOBS, '{"prompt": "p", "provider": "simulated", "model": "sim-small", "max_attempts": true}', "max_attempts"),
    ],
)
def test_body_text_and_types_are_checked_before_anything_runs(path, body, field, staff_user, redis_conn):
    response = token_client(staff_user).generic("POST", path, body, content_type="application/json")
    error = error_of(response, 400)
    assert field in error["details"], error
    assert AIJob.objects.count() == 0
    assert [k for k in redis_conn.keys("*") if not k.startswith(b"aipb-cache:")] == []  # nothing queued or paused


@pytest.mark.parametrize("key", ["nul\u0000key", "x" * 256, ""])
def test_idempotency_keys_the_database_cannot_store_are_400(key, user, redis_conn):
    response = token_client(user).post(JOBS, {"prompt": "p", **SIM}, format="json", HTTP_IDEMPOTENCY_KEY=key)
    error_of(response, 400)
    assert AIJob.objects.count() == 0


# --- page sizes and hostile filters on every list endpoint ---

LISTS = ["/api/ai/jobs", "/api/ai/dlq"]
REPORTS = ["/api/ai/usage/report", "/api/ai/usage/current-month", "/api/ai/usage/last-n-days"]


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("limit=500", 200),
        ("limit=501", 400),
        ("limit=1000000000000000000000000", 400),
        ("limit=0", 400),
        ("limit=-1", 400),
        ("limit=1e3", 400),
        ("limit=", 400),
        ("offset=10000000", 200),
        ("offset=10000001", 400),
        ("offset=-5", 400),
        ("offset=99999999999999999999999999999", 400),
    ],
)
def test_page_size_and_offset_caps(path, query, status, world, staff_user):
    response = token_client(staff_user).get(f"{path}?{query}")
    if status == 200:
        assert response.status_code == 200
        assert response.json()["results"] == [] or query == "limit=500"
    else:
        error_of(response, 400)


HOSTILE = [
    "' OR '1'='1",
    "sim-small' --",
    "1; DROP TABLE jobs_aijob; --",
    'sim-small" OR 1=1 --',
    "%",
    "_",
    "\\",
    "sim-small\u0000",
    "9" * 400,
    "-1e309",
    "${jndi:ldap://x}",
    "x" * 201,
]
FILTERS = {
    "/api/ai/jobs": ["model", "status", "provider", "priority", "error_type", "limit", "offset"],
    "/api/ai/dlq": ["model", "status", "provider", "error_type", "retryable", "limit", "offset"],
    "/api/ai/usage/report": ["model", "provider", "user", "top", "start", "end", "format"],
    "/api/ai/usage/current-month": ["model", "provider", "user", "top", "format"],
    "/api/ai/usage/last-n-days": ["model", "provider", "user", "top", "days", "format"],
    "/api/ai/jobs/metrics": ["since"],
    "/api/ai/usage/prices": ["history"],
}


# Already percent-encoded: bytes that are not UTF-8 (a lone surrogate, 0xFF), NUL, a bare "%".
RAW_HOSTILE = ["%ED%A0%80", "%FF%FE", "%00", "%", "%%32%35"]


@pytest.mark.parametrize("path", sorted(FILTERS))
def test_hostile_filter_values_are_400_or_empty_never_500(path, world, staff_user, user):
    tables_before = (AIJob.objects.count(), DeadLetter.objects.count())
    for client in (token_client(staff_user), token_client(user)):
        for name in FILTERS[path]:
            urls = [f"{path}?{urlencode({name: value})}" for value in HOSTILE]
            urls += [f"{path}?{name}={raw}" for raw in RAW_HOSTILE]
            for url in urls:
                response = client.get(url)
                value = url
                assert response.status_code in (200, 400, 403), (path, name, value, response.status_code)
                if response.status_code == 200 and "results" in response.json():
                    assert response.json()["results"] == [], (path, name, value)  # matched nothing
                elif response.status_code != 200:
                    error_of(response, response.status_code)
    assert (AIJob.objects.count(), DeadLetter.objects.count()) == tables_before


def test_sql_looking_text_is_matched_literally(world, staff_user):
    """A model filter is data, not SQL: the quote-laden value matches nothing, a real one matches."""
    client = token_client(staff_user)
    assert client.get("/api/ai/jobs", {"model": "sim-small' OR '1'='1"}).json()["count"] == 0
    assert client.get("/api/ai/jobs", {"model": "sim-small"}).json()["count"] == len(world.a.jobs) + len(world.b.jobs)
    assert client.get("/api/ai/dlq", {"model": "sim-%"}).json()["count"] == 0
    assert client.get("/api/ai/dlq", {"model": "sim-small"}).json()["count"] == 2


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/ai/jobs/not-a-uuid"),
        ("get", "/api/ai/jobs/1%20OR%201=1"),
        ("delete", "/api/ai/jobs/00000000-0000-0000-0000-000000000000"),
        ("post", "/api/ai/dlq/99999999999999999999/retry"),
        ("post", "/api/ai/dlq/-1/discard"),
    ],
)
def test_hostile_ids_in_the_path_are_404(method, path, staff_user, db):
    assert error_of(getattr(token_client(staff_user), method)(path), 404)["type"] == "not_found"


# --- per-user submission throttle ---


@pytest.fixture
def submit_rate(monkeypatch):
    """DRF binds the rates when it is imported; each test sets its own."""

    def set_rate(rate: str) -> None:
        monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"submit": rate})

    cache.clear()
    yield set_rate
    cache.clear()


def test_submissions_over_the_rate_are_429_with_retry_after(submit_rate, user, other_user, redis_conn):
    submit_rate("3/min")
    client = token_client(user)
    for n in range(3):
        assert client.post(JOBS, {"prompt": f"page {n}", **SIM}, format="json").status_code == 201

    response = client.post(JOBS, {"prompt": "one too many", **SIM}, format="json")

    error = error_of(response, 429)
    assert error["type"] == "throttled"
    assert 1 <= int(response["Retry-After"]) <= 60
    assert AIJob.objects.count() == 3
    # reads are not throttled, and the limit is per user
    assert client.get(JOBS).status_code == 200
    assert token_client(other_user).post(JOBS, {"prompt": "bob's page", **SIM}, format="json").status_code == 201
    # a session (not a token) is the same user, the same count
    session = APIClient(enforce_csrf_checks=False)
    session.force_login(user)
    assert session.post(JOBS, {"prompt": "via the session", **SIM}, format="json").status_code == 429


def test_the_throttle_count_lives_in_redis(submit_rate, user, redis_conn):
    submit_rate("2/min")
    token_client(user).post(JOBS, {"prompt": "one", **SIM}, format="json")
    keys = [k.decode() for k in redis_conn.keys("aipb-cache:*")]
    assert keys == [f"aipb-cache:1:throttle_submit_{user.pk}"], keys


CHILD = """
import django, json, sys
django.setup()
from rest_framework.test import APIClient
client = APIClient(HTTP_HOST="localhost")
client.credentials(HTTP_AUTHORIZATION="Token " + sys.argv[1])
codes = [client.post("/api/ai/jobs", {"prompt": f"child {n}", "provider": "simulated", "model": "sim-small"},
                     format="json").status_code for n in range(int(sys.argv[2]))]
print(json.dumps(codes))
"""


@pytest.mark.django_db(transaction=True)
def test_the_throttle_is_shared_by_separate_processes(submit_rate, user, redis_conn):
    """Two processes (two gunicorn workers): 3 submissions here, then 3 more from another process,
    with a rate of 4 a minute: the other process is refused after one, because it sees this one's count."""
    submit_rate("4/min")
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=user).key
    client = token_client(user)
    assert [client.post(JOBS, {"prompt": f"here {n}", **SIM}, format="json").status_code for n in range(3)] == [201] * 3

    child = subprocess.run(
        [sys.executable, "-c", CHILD, token, "3"],
        cwd=BASE_DIR,
        env=child_env(AI_SUBMIT_THROTTLE_RATE="4/min", DJANGO_SETTINGS_MODULE="aipb.settings"),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout.strip().splitlines()[-1]) == [201, 429, 429]
    assert AIJob.objects.filter(owner=user).count() == 4


def test_the_cache_clear_spares_the_queues(submit_rate, user, redis_conn):
    """The cache shares Redis with RQ: Django's RedisCache.clear() would FLUSHDB and lose every queued job."""
    submit_rate("5/min")
    token_client(user).post(JOBS, {"prompt": "queued", **SIM}, format="json")
    redis_conn.rpush("rq:queue:ai-default", "a-job-id")
    redis_conn.set("rq:job:a-job-id", "payload")
    queue_keys = {k for k in redis_conn.keys("*") if not k.startswith(b"aipb-cache:")}
    assert redis_conn.keys("aipb-cache:*")

    cache.clear()

    assert redis_conn.keys("aipb-cache:*") == []
    assert set(redis_conn.keys("*")) == queue_keys
