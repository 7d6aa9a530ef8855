"""Production settings: `manage.py check --deploy` is clean, /metrics is never redirected to HTTPS,
security headers and secure cookies are on, and session-authenticated unsafe API requests need CSRF.

The production cases run in a child process with a production environment (settings are read from
the environment once, at import), the rest in this process."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.test import Client, RequestFactory
from rest_framework.test import APIClient

from aipb.views import csrf_failure
from jobs.models import AIJob
from tests.security.conftest import token_client

BASE_DIR = django_settings.BASE_DIR
HOST = "aipb.example.com"


def production_env(**overrides: str) -> dict[str, str]:
    """What a production deployment sets, and nothing from this test run's environment but the URLs."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/tmp"),
        "DATABASE_URL": os.environ["DATABASE_URL"],
        "REDIS_URL": django_settings.REDIS_URL,
        "DJANGO_SETTINGS_MODULE": "aipb.settings",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
        "DJANGO_ALLOWED_HOSTS": HOST,
        "DJANGO_CSRF_TRUSTED_ORIGINS": f"https://{HOST}",
        "DJANGO_BEHIND_TLS_PROXY": "1",
        "DJANGO_SECURE_SSL_REDIRECT": "1",
        "DJANGO_HSTS_SECONDS": "31536000",
        "DJANGO_HSTS_INCLUDE_SUBDOMAINS": "1",
        "DJANGO_HSTS_PRELOAD": "1",
        # a deployment runs collectstatic before starting: the run's collected files (tests/conftest.py)
        "AIPB_VAR_DIR": str(Path(django_settings.STATIC_ROOT).parent),
        "PYTHONUNBUFFERED": "1",
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_under_production_settings():
    result = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_catches_what_production_must_not_do():
    """The check can fail: without HSTS and the HTTPS redirect, with a short key, it says so."""
    env = production_env(DJANGO_HSTS_SECONDS="0", DJANGO_SECURE_SSL_REDIRECT="0", DJANGO_SECRET_KEY="short")
    result = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], env)
    assert result.returncode != 0
    for code in ("security.W004", "security.W008", "security.W009"):
        assert code in result.stderr, result.stderr


# A production web process, in a child: requests through the real middleware stack and settings.
CHILD = """
import json, django
django.setup()
from django.conf import settings
from django.test import Client

def seen(response):
    return {
        "status": response.status_code,
        "location": response.get("Location"),
        "headers": {k.lower(): v for k, v in response.items()},
        "cookies": {name: {"secure": bool(c["secure"]), "httponly": bool(c["httponly"]), "samesite": c["samesite"]}
                    for name, c in response.cookies.items()},
    }

client = Client(HTTP_HOST="aipb.example.com")
out = {
    "http /metrics": seen(client.get("/metrics")),
    "http /api/version": seen(client.get("/api/version")),
    "http /admin/login/": seen(client.get("/admin/login/")),
    "https /api/version": seen(client.get("/api/version", HTTP_X_FORWARDED_PROTO="https")),
    "https /admin/login/": seen(client.get("/admin/login/", HTTP_X_FORWARDED_PROTO="https")),
    "https /metrics": seen(client.get("/metrics", HTTP_X_FORWARDED_PROTO="https")),
    "settings": {
        name: getattr(settings, name)
        for name in ("DEBUG", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SESSION_COOKIE_HTTPONLY",
                     "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS")
    },
    "renderers": settings.REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"],
}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def production():
    result = run(["-c", CHILD], production_env())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_metrics_is_never_redirected_to_https(production):
    assert production["http /metrics"]["status"] == 200
    assert production["https /metrics"]["status"] == 200
    # everything else over plain http is sent to https
    for page in ("http /api/version", "http /admin/login/"):
        assert production[page]["status"] == 301, page
        assert production[page]["location"].startswith(f"https://{HOST}/"), page
    assert production["https /api/version"]["status"] == 200


def test_the_redirect_exemption_matches_only_metrics(settings, db):
    """SECURE_REDIRECT_EXEMPT is matched against the path without its leading slash."""
    settings.SECURE_SSL_REDIRECT = True
    client = Client()
    assert client.get("/metrics").status_code == 200
    assert client.get("/metrics/x").status_code == 301
    assert client.get("/api/metrics").status_code == 301
    assert client.get("/admin/metrics").status_code == 301


def test_security_headers_and_hsts_in_production(production):
    for page in ("https /api/version", "https /admin/login/", "https /metrics"):
        headers = production[page]["headers"]
        assert headers["x-content-type-options"] == "nosniff", page
        assert headers["x-frame-options"] == "DENY", page
        assert headers["referrer-policy"] == "same-origin", page
        assert headers["cross-origin-opener-policy"] == "same-origin", page
        assert headers["strict-transport-security"] == "max-age=31536000; includeSubDomains; preload", page


def test_secure_cookies_and_no_browsable_api_in_production(production):
    assert production["https /admin/login/"]["cookies"]["csrftoken"]["secure"] is True
    assert production["settings"] == {
        "DEBUG": False,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SESSION_COOKIE_HTTPONLY": True,
        "SECURE_SSL_REDIRECT": True,
        "SECURE_HSTS_SECONDS": 31536000,
    }
    assert production["renderers"] == ["rest_framework.renderers.JSONRenderer"]


def test_security_headers_here_and_hsts_only_over_https(settings, db):
    settings.SECURE_HSTS_SECONDS = 3600
    client = Client()
    for path in ("/api/version", "/api/ai/jobs", "/admin/login/", "/metrics", "/api/no-such"):
        response = client.get(path)
        assert response["X-Content-Type-Options"] == "nosniff", path
        assert response["X-Frame-Options"] == "DENY", path
        assert response["Referrer-Policy"] == "same-origin", path
        assert "Strict-Transport-Security" not in response, path  # never over plain http
    assert client.get("/api/version", secure=True)["Strict-Transport-Security"] == "max-age=3600"


def test_the_session_cookie_is_secure_and_http_only(staff_user):
    client = Client()
    response = client.post("/admin/login/", {"username": "ops", "password": "correct-horse-battery"})
    assert response.status_code == 302
    cookie = response.cookies["sessionid"]
    assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Lax"


# --- CSRF on session-authenticated API requests ---


def csrf_session(user) -> tuple[APIClient, str]:
    """A browser session: logged in, CSRF checks on, and the CSRF token it was given."""
    token = Client().get("/admin/login/").cookies["csrftoken"].value  # a page with a form sets the cookie
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    client.cookies["csrftoken"] = token
    return client, token


UNSAFE = [
    ("post", "/api/ai/jobs", {"prompt": "p", "provider": "simulated", "model": "sim-small"}),
    ("post", "/api/ai/queue/pause", {}),
    ("post", "/api/ai/dlq/retry", {}),
]


@pytest.mark.parametrize(("method", "path", "body"), UNSAFE)
def test_a_session_request_without_the_csrf_token_is_403_and_changes_nothing(
    method, path, body, staff_user, redis_conn
):
    client, _ = csrf_session(staff_user)

    response = getattr(client, method)(path, body, format="json")

    assert response.status_code == 403
    error = response.json()["error"]
    assert error["type"] == "permission_denied" and "CSRF" in error["message"]
    assert AIJob.objects.count() == 0
    assert [k for k in redis_conn.keys("*") if not k.startswith(b"aipb-cache:")] == []


def test_per_job_actions_need_the_token_too(world, users_and_staff):
    user, staff = users_and_staff
    client, _ = csrf_session(user)
    job = world.a.queued
    for method, path in (
        ("delete", f"/api/ai/jobs/{job.id}"),
        ("post", f"/api/ai/jobs/{job.id}/cancel"),
        ("post", f"/api/ai/jobs/{world.a.dead.id}/retry"),
    ):
        assert getattr(client, method)(path).status_code == 403, path
    job.refresh_from_db()
    assert job.status == "queued"
    staff_client, _ = csrf_session(staff)
    assert staff_client.post(f"/api/ai/dlq/{world.a.dead_letter.id}/discard").status_code == 403
    world.a.dead_letter.refresh_from_db()
    assert world.a.dead_letter.status == "open"


@pytest.fixture
def users_and_staff(user, staff_user):
    return user, staff_user


def test_with_the_token_the_session_request_goes_through(user, redis_conn):
    client, token = csrf_session(user)
    body = {"prompt": "p", "provider": "simulated", "model": "sim-small"}
    assert client.post("/api/ai/jobs", body, format="json", HTTP_X_CSRFTOKEN=token).status_code == 201
    assert client.get("/api/ai/jobs").status_code == 200  # safe methods need no token
    # a forged cross-site request carries the cookie but not the token: refused even with a wrong token
    assert client.post("/api/ai/jobs", body, format="json", HTTP_X_CSRFTOKEN="x" * 32).status_code == 403
    assert AIJob.objects.count() == 1


def test_a_token_authenticated_request_needs_no_csrf_token(user, redis_conn):
    """An Authorization header cannot be sent cross-site by a form, so token clients need no CSRF token."""
    client = token_client(user)
    client.enforce_csrf_checks = True
    body = {"prompt": "p", "provider": "simulated", "model": "sim-small"}
    assert client.post("/api/ai/jobs", body, format="json").status_code == 201


def test_a_post_to_an_unknown_api_url_is_a_json_404_even_with_a_session(user):
    client, _ = csrf_session(user)
    response = client.post("/api/ai/no-such-endpoint", {}, format="json")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


def test_csrf_failures_outside_drf_have_the_error_shape_under_api():
    factory = RequestFactory()
    response = csrf_failure(factory.post("/api/anything"), reason="CSRF cookie not set.")
    assert response.status_code == 403
    assert json.loads(response.content) == {
        "error": {"type": "permission_denied", "message": "CSRF check failed: CSRF cookie not set.", "details": None}
    }
    page = csrf_failure(factory.post("/admin/login/"), reason="CSRF cookie not set.")
    assert page.status_code == 403 and page["Content-Type"].startswith("text/html")
