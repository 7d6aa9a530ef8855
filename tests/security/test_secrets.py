"""Provider keys never leave the process that uses them: after jobs run through a real forking RQ worker
against the loopback fake providers — successes, retries, timeouts, provider errors, and a proxy that
answers 401 with our key in the body — the keys appear in no API response, admin or django-rq page,
dead letter, database row, Redis value, metric, or log line (DEBUG, this process and the worker's)."""

from __future__ import annotations

import logging

import pytest
from django.test import Client

from dlq.models import DeadLetter
from jobs.models import AIJob, JobAttempt, JobStatus
from jobs.providers import get_provider, reset_providers
from tests.factories import UserFactory
from tests.fakes import FakeAnthropicServer, FakeGeminiServer, FakeOpenAIServer
from tests.security.conftest import token_client

pytestmark = pytest.mark.django_db(transaction=True)

# Distinctive keys; only OpenAI's has a shape the redactor knows by pattern (sk-...): the others must be
# caught because they are the configured key.
KEYS = {
    "openai": "sk-test-SECRET-openai-7f3a9c1e5b2d46802e4b",
    "anthropic": "ant-test-SECRET-anthropic-0c4e8a2f6b1d93",
    "google": "gem-test-SECRET-google-9d2b7e4a1c6f5e08",
}
FRAGMENTS = ("SECRET", "7f3a9c1e5b2d", "0c4e8a2f6b1d", "9d2b7e4a1c6f")
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-3-haiku", "google": "gemini-2.0-flash"}
SERVERS = {"openai": FakeOpenAIServer, "anthropic": FakeAnthropicServer, "google": FakeGeminiServer}
SETTING = {"openai": "OPENAI", "anthropic": "ANTHROPIC", "google": "GEMINI"}
# Each prompt's marker scripts the fake's answers for that job's attempts (tests/fakes/base.py).
SCENARIOS = {
    "ok": "ok",
    "rate-limited-then-ok": "429,ok",
    "server-error": "500",
    "auth-error": "401",
    "timeout": "timeout",
}


@pytest.fixture
def fakes(settings):
    servers = {provider: cls(api_key=KEYS[provider], hang_seconds=1.5) for provider, cls in SERVERS.items()}
    for provider, server in servers.items():
        server.start()
        setattr(settings, f"{SETTING[provider]}_API_KEY", KEYS[provider])
        setattr(settings, f"{SETTING[provider]}_BASE_URL", server.base_url)
    settings.AI_PROVIDER_TIMEOUT_SECONDS = 0.5
    settings.AI_RETRY_AFTER_MAX_SECONDS = 1  # the fakes ask for 7 s and more after a 429
    reset_providers()
    for provider in servers:
        get_provider(provider)  # import each SDK here, once, not in every forked work-horse
    yield servers
    for server in servers.values():
        server.stop()
    reset_providers()


def leaks(text: str) -> list[str]:
    return [needle for needle in (*KEYS.values(), *FRAGMENTS) if needle in text]


def redis_dump(conn) -> str:
    """Every value in the test Redis database, whatever its type (RQ's job hashes hold args, results, exc_info)."""
    parts = []
    for key in conn.scan_iter(count=1000):
        kind = conn.type(key).decode()
        if kind == "string":
            value = conn.get(key)
        elif kind == "hash":
            value = conn.hgetall(key)
        elif kind == "list":
            value = conn.lrange(key, 0, -1)
        elif kind == "set":
            value = conn.smembers(key)
        elif kind == "zset":
            value = conn.zrange(key, 0, -1)
        else:
            value = kind
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)


def test_provider_keys_appear_nowhere(fakes, user, run_worker, redis_conn, caplog, capfd):
    caplog.set_level(logging.DEBUG)  # the root logger; forked work-horses inherit it and log to stderr
    client = token_client(user)
    for provider, model in MODELS.items():
        for name, marker in SCENARIOS.items():
            body = {
                "prompt": f"A page for {name} [[fake:{marker}#{provider}-{name}]]",
                "provider": provider,
                "model": model,
                "max_attempts": 2 if name == "rate-limited-then-ok" else 1,
            }
            assert client.post("/api/ai/jobs", body, format="json").status_code == 201
    run_worker(timeout=90)

    # Then the key goes bad, behind a proxy that puts the rejected key in its 401 body.
    for provider, server in fakes.items():
        server.api_key = "the-key-the-provider-wants-now"
        server.echo_key = True
        body = {"prompt": "A page after the key was rotated", "provider": provider, "model": MODELS[provider]}
        assert client.post("/api/ai/jobs", body, format="json").status_code == 201
    run_worker(timeout=60)

    # The run did what it should, and the keys were really there to leak.
    assert AIJob.objects.count() == 18
    assert AIJob.objects.filter(status=JobStatus.SUCCEEDED).count() == 6  # ok and 429-then-ok, per provider
    assert AIJob.objects.filter(status=JobStatus.DEAD).count() == 12
    for provider, server in fakes.items():
        sent = [str(request.headers) + str(request.query) for request in server.requests]
        assert any(KEYS[provider] in text for text in sent), provider
        assert any(KEYS[provider] in request.reply_body for request in server.requests), provider  # the echo
    assert DeadLetter.objects.filter(error_type="AUTH_ERROR").count() == 6

    texts: dict[str, str] = {}

    # API responses, as the owner and as staff
    staff = token_client(UserFactory(username="ops", is_staff=True))
    superuser = UserFactory(username="root", is_staff=True, is_superuser=True)
    for who, api in (("user", client), ("staff", staff)):
        for path in (
            "/api/ai/jobs?limit=500",
            "/api/ai/providers",
            "/api/ai/usage/report",
            "/api/ai/usage/current-month",
            "/api/ai/usage/last-n-days",
            "/api/version",
            "/api/schema/",
            "/api/ai/dlq?limit=500",
            "/api/ai/dlq/stats",
            "/api/ai/queue",
            "/api/ai/jobs/metrics",
            "/api/ai/usage/prices",
        ):
            texts[f"{who} GET {path}"] = api.get(path).content.decode()
        for job in AIJob.objects.all():
            texts[f"{who} GET job {job.id}"] = api.get(f"/api/ai/jobs/{job.id}").content.decode()
        csv = api.get("/api/ai/usage/report?format=csv")
        texts[f"{who} usage csv"] = b"".join(csv.streaming_content).decode()
    # error messages the API gives
    texts["submit error"] = client.post(
        "/api/ai/jobs", {"prompt": "p", "provider": "openai", "model": "gpt-9"}, format="json"
    ).content.decode()
    for entry in DeadLetter.objects.all():
        texts[f"retry {entry.id}"] = staff.post(f"/api/ai/dlq/{entry.id}/retry").content.decode()

    # admin and django-rq pages
    admin = Client()
    admin.force_login(superuser)
    pages = [
        "/admin/",
        "/admin/operations/",
        "/admin/jobs/aijob/",
        "/admin/dlq/deadletter/",
        "/admin/usage/tokenusage/",
        "/admin/usage/tokenusage/spend/",
        "/admin/usage/modelprice/",
        "/django-rq/",
        "/django-rq/queues/0/",
        "/django-rq/queues/1/",
        "/django-rq/queues/1/finished/",
        "/django-rq/queues/1/failed/",
        "/django-rq/queues/1/scheduled/",
        "/django-rq/stats.json",
        "/django-rq/metrics",
    ]
    pages += [f"/admin/jobs/aijob/{job.id}/change/" for job in AIJob.objects.all()]
    pages += [f"/admin/dlq/deadletter/{entry.id}/change/" for entry in DeadLetter.objects.all()]
    rq_jobs = [key.decode().removeprefix("rq:job:") for key in redis_conn.scan_iter("rq:job:*")]
    pages += [f"/django-rq/queues/1/{rq_job}/" for rq_job in rq_jobs if ":" not in rq_job]
    for page in pages:
        response = admin.get(page)
        assert response.status_code == 200, (page, response.status_code)
        texts[f"page {page}"] = response.content.decode()

    # what is stored: dead-letter snapshots, job and attempt rows, every Redis value
    for entry in DeadLetter.objects.all():
        texts[f"dead letter {entry.id}"] = f"{entry.error_message} {entry.payload!r}"
    for job in AIJob.objects.all():
        texts[f"job row {job.id}"] = f"{job.error_message} {job.result!r} {job.options!r}"
    for attempt in JobAttempt.objects.all():
        texts[f"attempt row {attempt.id}"] = attempt.error_message
    texts["redis"] = redis_dump(redis_conn)
    texts["/metrics"] = Client().get("/metrics").content.decode()

    # logs: this process at DEBUG, and everything the worker and its work-horses wrote
    texts["caplog"] = "\n".join(f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    out, err = capfd.readouterr()
    texts["worker stdout"], texts["worker stderr"] = out, err

    leaked = {where: found for where, text in texts.items() if (found := leaks(text))}
    assert leaked == {}, f"provider keys leaked into: {sorted(leaked)}"
    assert len(texts) > 100
    # the echoed keys were there, and were redacted
    rotated = DeadLetter.objects.filter(job__prompt__contains="rotated")
    assert rotated.count() == 3 and all("[redacted]" in entry.error_message for entry in rotated)
