"""Who may read or change what: every /api/ route and method, every admin page, django-rq and /metrics,
for anonymous, user A (alice), user B (bob) and staff.

The URLconf is walked: a route or method that is not in the matrix fails the test, so a new endpoint
cannot be added without saying who may use it. A refused request changes nothing.
"""

from __future__ import annotations

import json

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.test import APIClient

from dlq.models import DeadLetter
from jobs import queue_control
from jobs.models import AIJob, Batch
from jobs.queues import enqueue_delivery
from schedules.models import Schedule
from tests.factories import UserFactory
from tests.security.conftest import World, token_client
from usage.models import TokenUsage
from webhooks.models import WebhookDelivery, WebhookSecret

ROLES = ("anon", "a", "b", "staff")
OPEN = {"anon": 200, "a": 200, "b": 200, "staff": 200}


def _users_only(ok: int) -> dict[str, int]:
    return {"anon": 401, "a": ok, "b": ok, "staff": ok}


def _owner_only(ok: int) -> dict[str, int]:
    """The object belongs to A: B gets the same 404 as for a job that does not exist."""
    return {"anon": 401, "a": ok, "b": 404, "staff": ok}


def _staff_only(ok: int) -> dict[str, int]:
    return {"anon": 401, "a": 403, "b": 403, "staff": ok}


# (method, route as in the URLconf) -> expected status per role. Path parameters are A's objects.
API_MATRIX: dict[tuple[str, str], dict[str, int]] = {
    ("POST", "api/auth/token"): OPEN,  # username and password of A in the body
    ("GET", "api/version"): OPEN,
    ("GET", "api/schema/"): OPEN,
    ("GET", "api/docs/"): OPEN,
    ("GET", "api/redoc/"): OPEN,
    ("GET", "api/ai/jobs"): _users_only(200),
    ("POST", "api/ai/jobs"): _users_only(201),
    ("GET", "api/ai/jobs/<uuid:job_id>"): _owner_only(200),
    ("DELETE", "api/ai/jobs/<uuid:job_id>"): _owner_only(204),
    ("POST", "api/ai/jobs/<uuid:job_id>/retry"): _owner_only(202),
    ("POST", "api/ai/jobs/<uuid:job_id>/cancel"): _owner_only(200),
    ("GET", "api/ai/providers"): _users_only(200),
    ("GET", "api/ai/jobs/metrics"): _staff_only(200),
    ("GET", "api/ai/queue"): _staff_only(200),
    ("POST", "api/ai/queue/pause"): _staff_only(200),
    ("POST", "api/ai/queue/resume"): _staff_only(200),
    ("POST", "api/ai/queue/intake"): _staff_only(200),
    ("GET", "api/ai/dlq"): _staff_only(200),
    ("GET", "api/ai/dlq/stats"): _staff_only(200),
    ("POST", "api/ai/dlq/retry"): _staff_only(202),
    ("POST", "api/ai/dlq/<int:entry_id>/retry"): _staff_only(202),
    ("POST", "api/ai/dlq/<int:entry_id>/discard"): _staff_only(200),
    ("GET", "api/ai/usage/report"): _users_only(200),  # each user's own usage; staff everyone's
    ("GET", "api/ai/usage/current-month"): _users_only(200),
    ("GET", "api/ai/usage/last-n-days"): _users_only(200),
    ("GET", "api/ai/usage/budget"): _users_only(200),  # each user's own limits; staff may name a user
    ("GET", "api/ai/usage/prices"): _staff_only(200),
    ("GET", "api/ai/stats/timeseries"): _staff_only(200),
    ("GET", "api/ai/schedules"): _users_only(200),
    ("POST", "api/ai/schedules"): _users_only(201),
    ("GET", "api/ai/schedules/<uuid:schedule_id>"): _owner_only(200),
    ("DELETE", "api/ai/schedules/<uuid:schedule_id>"): _owner_only(204),
    ("GET", "api/ai/batches"): _users_only(200),  # each user's own; staff everyone's
    ("POST", "api/ai/batches"): _users_only(201),
    ("GET", "api/ai/batches/<uuid:batch_id>"): _owner_only(200),
    ("GET", "api/ai/batches/<uuid:batch_id>/jobs"): _owner_only(200),
    ("POST", "api/ai/batches/<uuid:batch_id>/cancel"): _owner_only(200),
    ("POST", "api/ai/webhooks/secret"): _users_only(201),  # each user's own secret
    ("GET", "api/ai/webhooks/deliveries"): _users_only(200),  # each user's own; staff everyone's
    ("POST", "api/ai/webhooks/deliveries/<int:delivery_id>/resend"): _owner_only(202),
}
API_CATCH_ALL = "^api/"  # JSON 404 for every other /api/ path
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def walk(patterns, prefix: str = ""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
        else:
            yield prefix + str(pattern.pattern), pattern


def api_routes() -> dict[str, URLPattern]:
    return {route: p for route, p in walk(get_resolver().url_patterns) if route.startswith(("api/", "^api/"))}


def test_every_api_route_and_method_is_in_the_matrix():
    served = set()
    for route, pattern in api_routes().items():
        if route == API_CATCH_ALL:
            continue
        view_class = getattr(pattern.callback, "view_class", None)
        assert view_class is not None, f"{route}: not a class-based view; add it to the matrix by hand"
        served |= {(m.upper(), route) for m in HTTP_METHODS if hasattr(view_class, m)}
    assert served == set(API_MATRIX), (
        f"routes/methods served but not in the matrix: {sorted(served - set(API_MATRIX))}; "
        f"in the matrix but not served: {sorted(set(API_MATRIX) - served)}"
    )


def test_every_top_level_route_is_covered_by_a_test_here():
    tops = {route.split("/", 1)[0] + "/" if "/" in route else route for route, _ in walk(get_resolver().url_patterns)}
    assert tops == {"admin/", "django-rq/", "api/", "^api/", "metrics"}, tops


# --- the API matrix ---


def client_for(role: str, world: World, users: dict) -> APIClient:
    return APIClient() if role == "anon" else token_client(users[role])


def url_of(route: str, world: World) -> str:
    a = world.a
    job = a.dead if route.endswith("/retry") else a.queued
    route = route.replace("<int:delivery_id>", str(a.delivery.id))
    return "/" + (
        route.replace("<uuid:job_id>", str(job.id))
        .replace("<int:entry_id>", str(a.dead_letter.id))
        .replace("<uuid:schedule_id>", str(a.schedule.id))
        .replace("<uuid:batch_id>", str(a.batch.id))
    )


def body_of(method: str, route: str) -> dict | None:
    if (method, route) == ("POST", "api/auth/token"):
        return {"username": "alice", "password": "correct-horse-battery"}
    if (method, route) == ("POST", "api/ai/jobs"):
        return {"prompt": "A page for the matrix", "provider": "simulated", "model": "sim-small"}
    if (method, route) == ("POST", "api/ai/schedules"):
        return {"cron": "0 9 * * *", "prompt": "A page for the matrix", "provider": "simulated", "model": "sim-small"}
    if (method, route) == ("POST", "api/ai/batches"):
        return {"jobs": [{"prompt": "A page for the matrix", "provider": "simulated", "model": "sim-small"}]}
    if (method, route) == ("POST", "api/ai/queue/intake"):
        return {"open": False, "reason": "the matrix"}
    return None


def state() -> dict:
    """Everything a request could change."""
    return {
        "jobs": sorted(AIJob.objects.values_list("id", "status", "attempts", "max_attempts", "deliveries")),
        "dead_letters": sorted(DeadLetter.objects.values_list("id", "status")),
        "usage": TokenUsage.objects.count(),
        "paused": queue_control.queue_status()["paused"],
        "intake": queue_control.queue_status()["intake"]["open"],
        "schedules": sorted(Schedule.objects.values_list("id", "paused", "next_fire_at")),
        "batches": sorted(Batch.objects.values_list("id", "status", "finished_at")),
        "webhook_deliveries": sorted(WebhookDelivery.objects.values_list("id", "status", "attempts_base")),
        "webhook_secrets": sorted(WebhookSecret.objects.values_list("owner_id", "secret")),
    }


@pytest.fixture
def users(user, other_user, staff_user) -> dict:
    return {"a": user, "b": other_user, "staff": staff_user}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("method", "route"), sorted(API_MATRIX), ids=lambda v: v)
def test_api_matrix(method, route, role, world, users):
    expected = API_MATRIX[(method, route)][role]
    client = client_for(role, world, users)
    before = state()

    response = getattr(client, method.lower())(url_of(route, world), body_of(method, route), format="json")

    assert response.status_code == expected, (method, route, role, response.content[:300])
    if expected >= 400:
        error = response.json()["error"]
        assert set(error) == {"type", "message", "details"}
        assert state() == before, "a refused request changed something"


def test_a_never_sees_b_s_jobs_and_staff_sees_everyone_s(world, users):
    def ids(role):
        body = token_client(users[role]).get("/api/ai/jobs?limit=500").json()
        return {row["id"] for row in body["results"]}, {row["owner"] for row in body["results"]}

    a_jobs, b_jobs = {str(j.id) for j in world.a.jobs}, {str(j.id) for j in world.b.jobs}
    assert ids("a") == (a_jobs, {"alice"})
    assert ids("b") == (b_jobs, {"bob"})
    assert ids("staff") == (a_jobs | b_jobs, {"alice", "bob"})
    # every one of B's jobs is a 404 for A on every per-job route, and the same 404 as a job that does not exist
    client = token_client(users["a"])
    before = state()
    for job in world.b.jobs:
        for method, path in (
            ("get", f"/api/ai/jobs/{job.id}"),
            ("delete", f"/api/ai/jobs/{job.id}"),
            ("post", f"/api/ai/jobs/{job.id}/retry"),
            ("post", f"/api/ai/jobs/{job.id}/cancel"),
        ):
            response = getattr(client, method)(path)
            assert response.status_code == 404, (method, path)
            assert response.json()["error"]["message"] == f"job {job.id} not found"
    assert state() == before


@pytest.mark.parametrize("path", ["/api/ai/usage/report", "/api/ai/usage/current-month", "/api/ai/usage/last-n-days"])
def test_a_never_sees_b_s_usage_even_when_asking_for_it(path, world, users):
    def by_user(role, query=""):
        response = token_client(users[role]).get(path + query)
        assert response.status_code == 200, response.content
        return set(response.json()["by_user"])

    assert by_user("a") == {"alice"}
    assert by_user("a", "?user=bob") == {"alice"}  # the user filter is staff only, else ignored
    assert by_user("b") == {"bob"}
    assert by_user("staff") == {"alice", "bob"}
    assert by_user("staff", "?user=bob") == {"bob"}
    csv_response = token_client(users["a"]).get(path + "?format=csv&user=bob")
    csv_text = b"".join(csv_response.streaming_content).decode()
    assert "alice" in csv_text and "bob" not in csv_text


def test_dead_letters_are_staff_only_even_for_their_own_job(world, users):
    client = token_client(users["a"])
    before = state()
    for method, path in (
        ("get", "/api/ai/dlq"),
        ("get", f"/api/ai/dlq?limit=1&model={world.a.dead.model}"),
        ("post", f"/api/ai/dlq/{world.a.dead_letter.id}/retry"),
        ("post", f"/api/ai/dlq/{world.a.dead_letter.id}/discard"),
    ):
        assert getattr(client, method)(path).status_code == 403
    assert state() == before


def test_a_token_that_is_not_valid_is_401_everywhere(world):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    for method, route in API_MATRIX:
        if API_MATRIX[(method, route)]["anon"] == 401:
            response = getattr(client, method.lower())(url_of(route, world), format="json")
            assert response.status_code == 401, (method, route)
            assert response.json()["error"]["type"] == "authentication_failed"


def test_an_inactive_user_s_token_is_refused(world, users):
    client = token_client(users["a"])
    users["a"].is_active = False
    users["a"].save(update_fields=["is_active"])
    response = client.get("/api/ai/jobs")
    assert response.status_code == 401


# --- admin pages ---

# Admin URL names that are not a model's changelist/add/change/delete/history: each must be listed here.
ADMIN_SITE_PAGES = {
    "index",
    "operations",
    "operations-dashboard",
    "app_list",
    "usage_tokenusage_spend",
    "auth_user_password_change",
    "jobs_aijob_button",  # a job's retry / cancel: a GET only shows the confirmation
    "dlq_deadletter_button",  # a dead letter's retry / discard, likewise
}
ADMIN_OPEN_PAGES = {"login", "logout", "password_change", "password_change_done", "jsi18n", "autocomplete"}
ADMIN_OTHER = {"view_on_site"}  # redirects to the object's own URL; none of our models has one


def _admin_names(patterns) -> set[str]:
    names = set()
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            names |= _admin_names(pattern.url_patterns)
        elif pattern.name:
            names.add(pattern.name)
    return names


def model_pages() -> list[tuple[str, str]]:
    """(name, url) of every registered model's changelist and add page."""
    pages = []
    for model in admin.site._registry:
        info = f"{model._meta.app_label}_{model._meta.model_name}"
        base = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        pages += [(f"{info}_changelist", base), (f"{info}_add", base + "add/")]
    return pages


def test_every_admin_url_is_classified():
    names = _admin_names(admin.site.get_urls())
    model_generated = {
        f"{m._meta.app_label}_{m._meta.model_name}_{suffix}"
        for m in admin.site._registry
        for suffix in ("changelist", "add", "change", "delete", "history")
    }
    django_rq = {name for name in names if name.startswith("django_rq_")}  # the dashboard: see the django-rq test
    unclassified = names - model_generated - django_rq - ADMIN_SITE_PAGES - ADMIN_OPEN_PAGES - ADMIN_OTHER
    assert not unclassified, f"admin URLs nobody decided about: {sorted(unclassified)}"


@pytest.fixture
def superuser(db):
    return UserFactory(username="root", is_staff=True, is_superuser=True)


def session(user) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def _admin_urls(world: World) -> list[tuple[str, str]]:
    job, entry = world.a.dead, world.a.dead_letter
    usage = TokenUsage.objects.filter(owner=world.a.queued.owner).first()
    return [
        ("index", "/admin/"),
        ("operations", "/admin/operations/"),
        ("operations-dashboard", "/admin/operations/dashboard/"),
        ("jobs_aijob_button", f"/admin/jobs/aijob/{job.id}/do/retry/"),
        ("dlq_deadletter_button", f"/admin/dlq/deadletter/{entry.id}/do/discard/"),
        ("usage_tokenusage_spend", "/admin/usage/tokenusage/spend/"),
        ("app_list", "/admin/jobs/"),
        *model_pages(),
        ("jobs_aijob_change", f"/admin/jobs/aijob/{job.id}/change/"),
        ("dlq_deadletter_change", f"/admin/dlq/deadletter/{entry.id}/change/"),
        ("usage_tokenusage_change", f"/admin/usage/tokenusage/{usage.id}/change/"),
    ]


def test_admin_pages_need_staff(world, users, superuser):
    for name, url in _admin_urls(world):
        for role in ("anon", "a", "b"):
            response = session(users.get(role)).get(url)
            assert response.status_code == 302, (role, url, response.status_code)
            assert response["Location"].startswith("/admin/login/"), (role, url)
        root = session(superuser).get(url)
        # some models are read-only for everyone (rows change only through the services): no add page
        assert root.status_code == (403 if name.endswith("_add") and root.status_code == 403 else 200), (url, root)
        staff = session(users["staff"]).get(url)
        assert staff.status_code in (200, 403), (url, staff.status_code)  # per model: see the next test
    # the operator's pages: any active staff user
    for name in ("index", "operations", "operations-dashboard", "jobs_aijob_button", "dlq_deadletter_button"):
        assert session(users["staff"]).get(dict(_admin_urls(world))[name]).status_code == 200


@pytest.mark.parametrize(
    "url", ["/admin/auth/user/", "/admin/auth/group/", "/admin/authtoken/tokenproxy/", "/admin/usage/modelprice/add/"]
)
def test_staff_without_permissions_never_reach_users_tokens_or_prices(url, users, superuser):
    assert session(users["staff"]).get(url).status_code == 403
    assert session(superuser).get(url).status_code == 200


def test_superuser_reaches_every_model_changelist(users, superuser):
    for name, url in model_pages():
        if name.endswith("_changelist"):
            assert session(superuser).get(url).status_code == 200, url


def test_admin_actions_by_non_staff_change_nothing(world, users):
    """POSTs to the operations page and to a model action, by anonymous and by a user, are sent to log in."""
    before = state()
    for role in ("anon", "a"):
        client = session(users.get(role))
        client.post("/admin/operations/", {"action": "pause"})
        client.post(
            "/admin/jobs/aijob/",
            {"action": "delete_selected", "_selected_action": [str(world.a.queued.id)], "post": "yes"},
        )
        client.post(f"/admin/dlq/deadletter/{world.a.dead_letter.id}/delete/", {"post": "yes"})
    assert state() == before


# --- django-rq ---


# django-rq 4.2 answers these with a 500, to staff only: a made-up worker key, result id or cron scheduler
# (ValueError, NoSuchJobError), and the rq-scheduler page (ImproperlyConfigured: rq_scheduler is not
# installed; RQ's own scheduler is used). Third-party; reported, not tested here.
RQ_MADE_UP_IDS = {"worker_details", "result_detail", "cron_scheduler_detail", "cron_job_detail", "scheduler_jobs"}


def rq_urls(rq_job_id: str) -> list[tuple[str, str]]:
    fill = {
        "<int:queue_index>": "1",
        "<str:job_id>": rq_job_id,
        "<str:result_id>": "no-such-result",
        "<str:key>": "no-such-worker",
        "<int:scheduler_index>": "0",
        "<int:connection_index>": "0",
        "<str:scheduler_name>": "none",
        "<path:cron_job_name>": "none",
    }
    urls = []
    for route, pattern in walk(get_resolver().url_patterns):
        if not route.startswith("django-rq/"):
            continue
        url = "/" + route.replace("(?P<token>[\\w]+)?/?$", "wrongtoken/").replace("^", "").replace("/?$", "/")
        for key, value in fill.items():
            url = url.replace(key, value)
        urls.append((pattern.name, url))
    return urls


def test_django_rq_is_staff_only(world, users, redis_conn):
    job = world.a.queued  # a real delivery on ai-default (queue 1), so the job pages have a job to show
    enqueue_delivery(job_id=str(job.id), rq_job_id=job.rq_job_id, priority=job.priority)
    urls = rq_urls(job.rq_job_id)
    assert len(urls) >= 20  # the walk found django-rq's pages
    for name, url in urls:
        for role in ("anon", "a"):
            response = session(users.get(role)).get(url)
            if name in ("home_json", "metrics"):  # API-token views: 401 JSON without staff or RQ_API_TOKEN
                assert response.status_code == 401, (role, url)
            else:
                assert response.status_code == 302 and "/login/" in response["Location"], (role, url, response)
        if name not in RQ_MADE_UP_IDS:
            staff = session(users["staff"]).get(url)
            assert staff.status_code < 500, (url, staff.status_code)
    assert session(users["staff"]).get("/django-rq/").status_code == 200


def test_django_rq_actions_by_a_user_change_nothing(world, users, redis_conn):
    job = world.a.queued
    enqueue_delivery(job_id=str(job.id), rq_job_id=job.rq_job_id, priority=job.priority)
    before = state()
    queued = redis_conn.lrange("rq:queue:ai-default", 0, -1)
    assert queued == [job.rq_job_id.encode()]
    client = session(users["a"])
    for path in (
        "/django-rq/queues/1/empty/",
        "/django-rq/queues/1/requeue-all/",
        f"/django-rq/queues/1/{job.rq_job_id}/delete/",
        f"/django-rq/queues/1/{job.rq_job_id}/stop/",
    ):
        response = client.post(path, {"post": "yes"})
        assert response.status_code == 302 and "/login/" in response["Location"], path
    assert state() == before
    assert redis_conn.lrange("rq:queue:ai-default", 0, -1) == queued
    assert redis_conn.exists(f"rq:job:{job.rq_job_id}")


# --- /metrics ---


def test_metrics_is_open_without_a_metrics_token(users, settings, db):
    settings.METRICS_TOKEN = ""
    for role in ("anon", "a", "staff"):
        response = session(users.get(role)).get("/metrics")
        assert response.status_code == 200, role
        assert b"# TYPE" in response.content


def test_metrics_needs_the_bearer_token_when_one_is_set(users, settings, db):
    settings.METRICS_TOKEN = "scrape-secret-0123456789"
    for role in ("anon", "a", "staff"):  # a session, even staff's, is not the scrape token
        response = session(users.get(role)).get("/metrics")
        assert response.status_code == 401, role
        assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert b"# TYPE" not in response.content
    for header in ("Bearer wrong", "scrape-secret-0123456789", "Bearer scrape-secret-0123456789x", "Token scrape"):
        assert Client().get("/metrics", HTTP_AUTHORIZATION=header).status_code == 401, header
    response = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret-0123456789")
    assert response.status_code == 200
    assert b"# TYPE" in response.content


def test_the_schema_lists_every_error_a_route_can_give():
    """401 and 403 on every operation but the open ones; 404 where there is an id in the path."""
    schema = json.loads(Client().get("/api/schema/?format=json").content)
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            if path != "/api/version":
                assert {"401", "403"} <= codes, (method, path, codes)
            if "{" in path:
                assert "404" in codes, (method, path, codes)
            for code in codes - {"200", "201", "202", "204"}:
                content = operation["responses"][code]["content"]["application/json"]["schema"]
                assert content == {"$ref": "#/components/schemas/Error"}, (method, path, code)
