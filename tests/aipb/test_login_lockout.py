"""Login throttling (django-axes, aipb.login_throttle): a username+address pair is locked out after
AIPB_LOGIN_FAILURE_LIMIT consecutive failures, on POST /api/auth/token and /admin/login/ alike, even for the
right password, until the lockout time passes or an operator resets it.

Everything runs through Django's test client against the real middleware, backends and Postgres tables.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from io import StringIO

import pytest
from axes.models import AccessAttempt
from django.conf import settings as django_settings
from django.core.management import call_command
from django.test import Client, RequestFactory
from rest_framework.authtoken.models import Token

from aipb.login_throttle import client_ip
from tests.factories import UserFactory

TOKEN = "/api/auth/token"
ADMIN_LOGIN = "/admin/login/"
PASSWORD = "correct-horse-battery"  # tests.factories' default
LIMIT = 10
HERE = "127.0.0.1"  # the test client's REMOTE_ADDR
ELSEWHERE = "198.51.100.7"


@pytest.fixture
def alice(db):
    return UserFactory(username="alice")


@pytest.fixture
def ops(db):
    return UserFactory(username="ops", is_staff=True, is_superuser=True)


def token_login(username: str, password: str, client: Client | None = None, **extra):
    return (client or Client()).post(
        TOKEN, {"username": username, "password": password}, content_type="application/json", **extra
    )


def admin_login(username: str, password: str, **extra) -> Client:
    client = Client()
    client.response = client.post(ADMIN_LOGIN, {"username": username, "password": password, "next": "/admin/"}, **extra)
    return client


def fail(username: str, times: int = LIMIT, **extra) -> list[int]:
    return [token_login(username, "wrong-password", **extra).status_code for _ in range(times)]


def assert_locked(response) -> dict:
    assert response.status_code == 429, response.content
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "details"}
    assert body["error"]["type"] == "locked_out"
    retry_after = int(response["Retry-After"])
    assert 0 < retry_after <= django_settings.AIPB_LOGIN_LOCKOUT_MINUTES * 60
    assert body["error"]["details"] == {"retry_after": retry_after, "failure_limit": LIMIT}
    return body["error"]


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


# --------------------------------------------------------------------------- the token endpoint


def test_ten_wrong_passwords_lock_the_token_endpoint_even_for_the_right_one(alice):
    assert fail("alice") == [400] * (LIMIT - 1) + [429]  # the failure that reaches the limit says so

    response = token_login("alice", PASSWORD)

    assert_locked(response)
    assert not Token.objects.filter(user=alice).exists()
    assert AccessAttempt.objects.get(username="alice", ip_address=HERE).failures_since_start == LIMIT


def test_the_lock_is_per_username_and_address(alice):
    UserFactory(username="bob")
    fail("alice")

    assert token_login("alice", PASSWORD, REMOTE_ADDR=ELSEWHERE).status_code == 200  # another address
    assert token_login("bob", PASSWORD).status_code == 200  # another user from the same address
    assert_locked(token_login("alice", PASSWORD))


def test_a_success_resets_the_count(alice):
    fail("alice", LIMIT - 1)
    assert token_login("alice", PASSWORD).status_code == 200
    assert not AccessAttempt.objects.filter(username="alice").exists()

    assert fail("alice", LIMIT - 1) == [400] * (LIMIT - 1)  # counted from zero again
    assert token_login("alice", PASSWORD).status_code == 200


def test_retry_after_is_what_is_left_of_the_lockout_and_then_it_ends(alice):
    fail("alice")
    lockout = timedelta(minutes=django_settings.AIPB_LOGIN_LOCKOUT_MINUTES)
    attempt = AccessAttempt.objects.get(username="alice")
    AccessAttempt.objects.filter(pk=attempt.pk).update(
        attempt_time=attempt.attempt_time - lockout + timedelta(minutes=1)
    )

    assert 50 <= int(token_login("alice", PASSWORD)["Retry-After"]) <= 60
    # guesses while locked are not checked and do not restart the lockout
    assert token_login("alice", "wrong-password").status_code == 429
    assert 50 <= int(token_login("alice", PASSWORD)["Retry-After"]) <= 60

    AccessAttempt.objects.filter(pk=attempt.pk).update(attempt_time=attempt.attempt_time - lockout)
    assert token_login("alice", PASSWORD).status_code == 200


def test_the_limit_comes_from_the_settings(alice, settings):
    settings.AXES_FAILURE_LIMIT = 3
    assert fail("alice", 3) == [400, 400, 429]
    error = assert_locked_with_limit(token_login("alice", PASSWORD), 3)
    assert "try again in" in error["message"]


def assert_locked_with_limit(response, limit: int) -> dict:
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["type"] == "locked_out" and error["details"]["failure_limit"] == limit
    return error


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ({"username": "a" * 151, "password": "x"}, "application/json"),  # over the user model's 150
        ({"username": "alice", "password": "x" * 4097}, "application/json"),
        ({"username": "al\x00ice", "password": "x"}, "application/json"),
        ({"username": "alice"}, "application/json"),
        ({"password": "x"}, "application/json"),
        ({"username": "", "password": ""}, "application/json"),
        (["alice", "x"], "application/json"),
        ({"username": "alice", "password": "x", "extra": 1}, "text/plain"),
    ],
)
def test_bad_input_is_a_4xx_and_counts_nothing(alice, body, content_type):
    for _ in range(LIMIT + 2):
        response = Client().post(TOKEN, body, content_type=content_type)
        assert response.status_code in (400, 415), response.content
        assert set(response.json()["error"]) == {"type", "message", "details"}
    assert not AccessAttempt.objects.exists()
    assert token_login("alice", PASSWORD).status_code == 200


def test_a_long_unknown_username_is_counted_without_a_server_error(db):
    assert fail("z" * 150) == [400] * (LIMIT - 1) + [429]


# --------------------------------------------------------------------------- the admin login


def test_ten_wrong_admin_passwords_lock_the_admin_login_and_give_no_session(ops):
    statuses = [admin_login("ops", "wrong-password").response.status_code for _ in range(LIMIT)]
    assert statuses == [200] * (LIMIT - 1) + [429]  # the form again, then axes' lockout page

    client = admin_login("ops", PASSWORD)

    assert client.response.status_code == 429
    assert not logged_in(client)
    assert client.get("/admin/").status_code == 302  # to the login page: no session


def test_the_admin_lock_is_per_address_and_shared_with_the_token_endpoint(ops):
    fail("ops")  # on the token endpoint

    assert admin_login("ops", PASSWORD).response.status_code == 429
    elsewhere = admin_login("ops", PASSWORD, REMOTE_ADDR=ELSEWHERE)
    assert elsewhere.response.status_code == 302 and logged_in(elsewhere)


def test_an_admin_login_resets_the_count(ops):
    for _ in range(LIMIT - 1):
        admin_login("ops", "wrong-password")
    assert logged_in(admin_login("ops", PASSWORD))
    assert not AccessAttempt.objects.filter(username="ops").exists()


# --------------------------------------------------------------------------- operators reset a lockout


@pytest.mark.parametrize(
    "command",
    [
        ("axes_reset_ip_username", HERE, "alice"),
        ("axes_reset_username", "alice"),
        ("axes_reset_ip", HERE),
        ("axes_reset",),
    ],
)
def test_a_reset_command_unlocks(alice, command):
    fail("alice")
    out = StringIO()

    call_command(*command, stdout=out)

    assert "1 attempts removed" in out.getvalue()
    assert token_login("alice", PASSWORD).status_code == 200


def test_a_pair_reset_leaves_other_lockouts_alone(alice):
    UserFactory(username="bob")
    fail("alice")
    fail("bob")

    call_command("axes_reset_ip_username", HERE, "alice", stdout=StringIO())

    assert token_login("alice", PASSWORD).status_code == 200
    assert token_login("bob", PASSWORD).status_code == 429


def test_list_attempts_shows_the_pair(alice):
    fail("alice", 2)
    out = StringIO()
    call_command("axes_list_attempts", stdout=out)
    assert "alice" in out.getvalue() and HERE in out.getvalue()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["axes_reset_ip_username", HERE], "the following arguments are required: username"),
        (["axes_reset_username"], "the following arguments are required: username"),
        (["axes_reset_ip"], "the following arguments are required: ip"),
    ],
)
def test_reset_commands_refuse_missing_arguments(alice, args, message):
    fail("alice")
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=django_settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and message in result.stderr
    assert token_login("alice", PASSWORD).status_code == 429


def test_resetting_nothing_says_so(db):
    out = StringIO()
    call_command("axes_reset_ip_username", HERE, "nobody", stdout=out)
    assert "No attempts found." in out.getvalue()


# --------------------------------------------------------------------------- the client address


def request_from(remote: str, forwarded: str | None = None):
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().post(TOKEN, **extra)


@pytest.mark.parametrize(
    ("proxies", "remote", "forwarded", "client"),
    [
        (0, "203.0.113.9", "192.0.2.1", "203.0.113.9"),  # no proxy trusted: the header is the client's to write
        (1, "10.0.0.2", "192.0.2.1", "192.0.2.1"),  # one proxy: the address it saw
        (1, "10.0.0.2", "6.6.6.6, 192.0.2.1", "192.0.2.1"),  # what the client prepended is not believed
        (2, "10.0.0.3", "6.6.6.6, 192.0.2.1, 10.0.0.2", "192.0.2.1"),
        (2, "10.0.0.3", "192.0.2.1", "192.0.2.1"),  # fewer hops than proxies: the leftmost a proxy wrote
        (1, "10.0.0.2", "not-an-address", "10.0.0.2"),  # garbage: the peer, never a 500
        (1, "10.0.0.2", " , ", "10.0.0.2"),
        (1, "10.0.0.2", "2001:db8::1", "2001:db8::1"),
        (1, "10.0.0.2", None, "10.0.0.2"),
        (0, "", None, None),
    ],
)
def test_client_ip_honours_the_trusted_proxy_count(settings, proxies, remote, forwarded, client):
    settings.AIPB_TRUSTED_PROXY_COUNT = proxies
    assert client_ip(request_from(remote, forwarded)) == client


def test_without_a_trusted_proxy_a_forged_header_does_not_escape_the_lock(alice):
    for n in range(LIMIT):
        token_login("alice", "wrong-password", HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")
    assert_locked(token_login("alice", PASSWORD, HTTP_X_FORWARDED_FOR="192.0.2.200"))


def test_behind_a_proxy_each_client_has_its_own_count(alice, settings):
    settings.AIPB_TRUSTED_PROXY_COUNT = 1
    proxy = {"REMOTE_ADDR": "10.0.0.2"}
    fail("alice", HTTP_X_FORWARDED_FOR="192.0.2.1", **proxy)

    assert_locked(token_login("alice", PASSWORD, HTTP_X_FORWARDED_FOR="6.6.6.6, 192.0.2.1", **proxy))
    assert token_login("alice", PASSWORD, HTTP_X_FORWARDED_FOR="192.0.2.2", **proxy).status_code == 200
    assert AccessAttempt.objects.get(username="alice").ip_address == "192.0.2.1"


# --------------------------------------------------------------------------- the settings


@pytest.mark.parametrize(
    ("name", "value"),
    [("AIPB_LOGIN_FAILURE_LIMIT", "0"), ("AIPB_LOGIN_LOCKOUT_MINUTES", "0"), ("AIPB_TRUSTED_PROXY_COUNT", "-1")],
)
def test_bad_settings_refuse_to_start(name, value):
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=django_settings.BASE_DIR,
        env={**_env(), name: value},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and f"{name} must be >=" in result.stderr


def test_settings_are_read_from_the_environment():
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME.total_seconds(), s.AIPB_TRUSTED_PROXY_COUNT, "
        "s.REST_FRAMEWORK['NUM_PROXIES'])"
    )
    env = {
        **_env(),
        "AIPB_LOGIN_FAILURE_LIMIT": "5",
        "AIPB_LOGIN_LOCKOUT_MINUTES": "2",
        "AIPB_TRUSTED_PROXY_COUNT": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=django_settings.BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == ["5", "120.0", "1", "1"], result.stderr


def _env() -> dict[str, str]:
    return {**os.environ, "DJANGO_SETTINGS_MODULE": "aipb.settings"}
