"""aipb.middleware.RequestIdMiddleware: an id on every request, in its log lines and the X-Request-ID header, and
every /api/ 500 in the error shape with that id, its traceback logged once under it."""

from __future__ import annotations

import io
import json
import logging

import pytest
from django.test import Client
from rest_framework.test import APIClient

from aipb.logs import JsonFormatter, RequestIdFilter

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.aipb.urls_errors")]


@pytest.fixture
def log_lines():
    """The lines the console handler would write in JSON, read back (the project's filter and formatter)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)


@pytest.mark.parametrize("path", ["/api/broken", "/api/broken-plain"])
def test_an_api_500_is_the_error_shape_with_the_request_id_of_its_log_line(path, log_lines):
    response = Client(raise_request_exception=False).get(path)
    assert response.status_code == 500 and response["Content-Type"] == "application/json"
    request_id = response["X-Request-ID"]
    assert len(request_id) == 32
    assert response.json() == {
        "error": {
            "type": "server_error",
            "message": f"internal server error; quote request id {request_id} when you report it",
            "details": {"request_id": request_id},
        }
    }
    assert "the bug" not in response.content.decode()  # nothing of the bug reaches the caller
    errors = [line for line in log_lines() if line["level"] == "ERROR"]
    (line,) = errors  # logged once: with its traceback, not again by Django without it
    assert line["request_id"] == request_id and line["logger"] == "aipb.middleware"
    assert f"GET {path}" in line["message"] and "Traceback" in line["exception"]


def test_an_html_500_under_the_api_becomes_the_error_shape():
    response = Client().get("/api/html-500")
    assert response.status_code == 500 and response.json()["error"]["type"] == "server_error"
    assert response.json()["error"]["details"]["request_id"] == response["X-Request-ID"]


def test_the_callers_request_id_is_kept_when_it_is_a_plain_token(log_lines):
    response = Client(raise_request_exception=False).get("/api/broken", HTTP_X_REQUEST_ID="lb-7f3a.2")
    assert response["X-Request-ID"] == "lb-7f3a.2" and response.json()["error"]["details"]["request_id"] == "lb-7f3a.2"
    assert [line["request_id"] for line in log_lines() if line["level"] == "ERROR"] == ["lb-7f3a.2"]
    for forged in ("a b", "x" * 129, "id\nWARNING forged line"):
        response = Client(raise_request_exception=False).get("/api/version", HTTP_X_REQUEST_ID=forged)
        assert response.status_code == 200 and len(response["X-Request-ID"]) == 32


def test_every_response_names_its_request_and_4xx_keep_their_shape(staff_user):
    client = APIClient()
    client.force_authenticate(staff_user)
    ok = client.get("/api/ai/queue/nothing-here")
    assert ok.status_code == 404 and ok["X-Request-ID"] and ok.json()["error"]["type"] == "not_found"
    bad = client.get("/api/ai/stats/timeseries", {"window": "2h"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "validation_error" and bad["X-Request-ID"]
    first, second = client.get("/api/version"), client.get("/api/version")
    assert first["X-Request-ID"] != second["X-Request-ID"]


def test_a_500_outside_the_api_is_djangos_page_with_the_id_in_header_and_log(log_lines):
    response = Client(raise_request_exception=False).get("/broken-page")
    assert response.status_code == 500 and not response["Content-Type"].startswith("application/json")
    request_id = response["X-Request-ID"]
    (line,) = [line for line in log_lines() if line["level"] == "ERROR"]
    assert line["logger"] == "django.request" and line["request_id"] == request_id and "Traceback" in line["exception"]
