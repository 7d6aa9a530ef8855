"""While Postgres cannot be reached every /api/ answer is a 503 in the error shape with Retry-After (token
authentication included), the admin answers a plain 503, /metrics still answers with ai_database_up 0, and
nothing is written. The outage is real: the process's connection is pointed at a port nothing listens on,
so psycopg's connect fails exactly as it does when Postgres is stopped."""

from __future__ import annotations

import pytest
from django.db import connections
from django.test import Client
from rest_framework.authtoken.models import Token

from jobs.models import AIJob
from tests.factories import UserFactory


class Outage:
    def __init__(self) -> None:
        self.conn = connections["default"]
        self.saved = dict(self.conn.settings_dict)

    def __call__(self) -> None:
        self.conn.close()
        self.conn.settings_dict.update(HOST="127.0.0.1", PORT="1")

    def end(self) -> None:
        self.conn.close()
        self.conn.settings_dict.clear()
        self.conn.settings_dict.update(self.saved)


@pytest.fixture
def outage(transactional_db):
    outage = Outage()
    yield outage
    outage.end()


def assert_unavailable(response) -> None:
    assert response.status_code == 503, response.content[:300]
    assert response["Content-Type"].startswith("application/json")
    assert response.json()["error"]["type"] == "service_unavailable"
    assert int(response["Retry-After"]) > 0


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/api/ai/jobs", None),
        ("post", "/api/ai/jobs", {"prompt": "a page", "provider": "local"}),
        ("get", "/api/ai/jobs/7f1c1b7e-9a51-4c38-9f7b-4d7f4b0c2a11", None),
        ("get", "/api/ai/dlq", None),
        ("get", "/api/ai/usage/current-month", None),
    ],
)
def test_token_requests_answer_503_json(outage, method, path, body):
    user = UserFactory(username="carol", is_staff=True)
    token = Token.objects.create(user=user).key
    client = Client(HTTP_AUTHORIZATION=f"Token {token}")
    outage()

    response = getattr(client, method)(path, body, content_type="application/json")

    assert_unavailable(response)


def test_token_login_answers_503_json(outage):
    UserFactory(username="dave")
    outage()
    response = Client().post("/api/auth/token", {"username": "dave", "password": "x"}, content_type="application/json")
    assert_unavailable(response)


def test_admin_answers_a_plain_503(outage):
    client = Client()
    client.force_login(UserFactory(username="ops2", is_staff=True))
    outage()

    response = client.get("/admin/jobs/aijob/")

    assert response.status_code == 503
    assert response["Content-Type"].startswith("text/plain")
    assert b"database is unavailable" in response.content
    assert int(response["Retry-After"]) > 0


def test_metrics_still_answer_with_database_down(outage):
    outage()
    response = Client().get("/metrics")
    assert response.status_code == 200
    text = response.content.decode()
    assert "ai_database_up 0.0" in text
    assert "ai_dlq_entries" not in text  # left out, not reported as zeros


def test_metrics_say_the_database_is_up(transactional_db):
    assert "ai_database_up 1.0" in Client().get("/metrics").content.decode()


def test_nothing_is_written_during_the_outage(outage):
    user = UserFactory(username="erin")
    token = Token.objects.create(user=user).key
    client = Client(HTTP_AUTHORIZATION=f"Token {token}")
    outage()
    response = client.post("/api/ai/jobs", {"prompt": "p", "provider": "local"}, content_type="application/json")
    outage.end()

    assert_unavailable(response)
    assert AIJob.objects.count() == 0
    # and the same request once Postgres is back is served
    assert (
        client.post("/api/ai/jobs", {"prompt": "p", "provider": "local"}, content_type="application/json").status_code
        == 201
    )
