"""e2e: the admin and the API docs as `make run` serves them: gunicorn with DEBUG off, static files from
WhiteNoise out of the collected STATIC_ROOT (hashed, gzipped), Swagger UI and ReDoc from the
drf-spectacular-sidecar package, and the Content-Security-Policy of django-csp, checked in headless
Chromium: the CSS applies, the content renders, nothing comes from another origin, and the page breaks
no rule of its policy.
"""

from __future__ import annotations

import gzip
import json
import re

import pytest
from django.conf import global_settings

from tests.factories import UserFactory
from tests.ops.chromium import Chromium
from tests.ops.served import PASSWORD, check_page, loaded_stylesheets, log_in, wait_true
from tests.ops.served import browser as browser  # the fixtures, shared with test_dashboard
from tests.ops.served import web as web

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# ReDoc 2 renders Redocly's logo from cdn.redoc.ly into its menu, unconditionally: the policy blocks it (no
# request leaves the browser, ReDoc hides the broken image). The one violation any of these pages has.
REDOC_LOGO = {"directive": "img-src", "blocked": "https://cdn.redoc.ly/redoc/logo-mini.svg"}
TRANSPARENT = "rgba(0, 0, 0, 0)"


def csp_directives(header: str) -> dict[str, list[str]]:
    return {name: values for name, *values in (part.split() for part in header.split(";") if part.strip())}


def urls_in(html: str) -> list[str]:
    return re.findall(r'\b(?:src|href)="([^"]*)"', html)


# --------------------------------------------------------------------------- HTTP


def test_static_files_are_served_by_the_app_hashed_gzipped_and_cached_as_immutable(web, collected_static):
    original = (collected_static / "admin" / "css" / "base.css").read_bytes()
    status, headers, body = web.get("/static/admin/css/base.css")
    assert (status, headers["content-type"].split(";")[0], body) == (200, "text/css", original)

    hashed = json.loads((collected_static / "staticfiles.json").read_text())["paths"]["admin/css/base.css"]
    assert re.fullmatch(r"admin/css/base\.[0-9a-f]{12}\.css", hashed)
    status, headers, body = web.get(f"/static/{hashed}", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == (collected_static / hashed).read_bytes()
    assert re.search(rb"url\(\"?\.\./img/[\w-]+\.[0-9a-f]{12}\.svg", gzip.decompress(body))  # its images hashed too
    assert "immutable" in headers["cache-control"] and "max-age=315360000" in headers["cache-control"]

    # the pages ask for the hashed name, so a new release is never served a stale cached stylesheet
    status, _, login_page = web.get("/admin/login/")
    assert status == 200 and f'href="/static/{hashed}"' in login_page.decode()
    assert web.get("/static/admin/css/no-such-file.css")[0] == 404


@pytest.mark.parametrize(
    ("path", "bundle"),
    [
        ("/api/docs/", "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle."),
        ("/api/redoc/", "/static/drf_spectacular_sidecar/redoc/bundles/redoc.standalone."),
    ],
)
def test_the_api_docs_come_from_the_package_and_name_no_other_origin(web, path, bundle):
    status, headers, body = web.get(path)
    html = body.decode()
    assert status == 200, html
    urls = urls_in(html)
    assert any(url.startswith(bundle) for url in urls), urls
    assert all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    assert "://" not in html  # no CDN, no web font, no absolute URL of any kind
    assert re.findall(r"<script\b(?![^>]*\bsrc=)[^>]*>", html) == []  # nothing inline to run
    for url in urls:
        assert web.get(url)[0] == 200, url

    policy = csp_directives(headers["content-security-policy"])
    assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval', no other origin
    assert policy["default-src"] == ["'self'"] and policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    if path == "/api/redoc/":
        assert policy["worker-src"] == ["'self'", "blob:"]  # its search index
    else:
        assert "worker-src" not in policy


def test_swagger_ui_start_up_script_is_served_from_its_own_url(web):
    status, _, body = web.get("/api/docs/")
    (script,) = [url for url in urls_in(body.decode()) if url.startswith("/api/docs/")]
    status, headers, body = web.get(script)
    assert status == 200 and headers["content-type"].startswith("application/javascript")
    assert "SwaggerUIBundle(" in body.decode() and '"/api/schema/"' in body.decode()


def test_admin_pages_carry_the_policy(web):
    status, headers, _ = web.get("/admin/login/")
    assert status == 200
    policy = csp_directives(headers["content-security-policy"])
    assert policy["script-src"] == ["'self'"] and policy["form-action"] == ["'self'"]


# --------------------------------------------------------------------------- Chromium


def background(browser: Chromium, selector: str) -> str:
    return browser.evaluate(f"getComputedStyle(document.querySelector({json.dumps(selector)})).backgroundColor")


def test_admin_operations_swagger_and_redoc_render_styled_under_the_policy_in_chromium(
    web, browser, settings, tmp_path
):
    # gunicorn verifies the password with the production hashers, not the tests' fast MD5
    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS
    UserFactory(username="csp-ops", is_staff=True, is_superuser=True, password=PASSWORD)
    log_in(browser, web.origin, "csp-ops")
    check_page(browser, web.origin)
    assert len(loaded_stylesheets(browser)) >= 3  # base, dashboard, nav_sidebar, ...
    assert background(browser, "#header") != TRANSPARENT  # admin/css/base.css applied
    assert "Operations page" in browser.evaluate("document.body.innerText")
    browser.screenshot(tmp_path / "admin.png")

    browser.navigate(f"{web.origin}/admin/operations/")
    assert browser.evaluate("location.pathname") == "/admin/operations/"
    assert browser.evaluate("!!document.querySelector('#queue-state h2')")
    assert background(browser, "#header") != TRANSPARENT
    check_page(browser, web.origin)
    browser.screenshot(tmp_path / "operations.png")

    status, _, body = web.get("/api/schema/?format=json")
    assert status == 200
    schema = json.loads(body)
    operations = sum(1 for item in schema["paths"].values() for method in item if method != "parameters")
    assert operations >= 10
    browser.navigate(f"{web.origin}/api/docs/")
    wait_true(browser, f"document.querySelectorAll('.opblock').length === {operations}", "Swagger's operation list")
    assert background(browser, ".opblock-summary-method") != TRANSPARENT  # swagger-ui.css applied
    assert "/api/ai/jobs" in browser.evaluate("document.body.innerText")
    check_page(browser, web.origin)
    browser.screenshot(tmp_path / "swagger.png")

    browser.navigate(f"{web.origin}/api/redoc/")
    wait_true(browser, "document.querySelectorAll('.api-content [data-section-id]').length > 0", "ReDoc's sections")
    assert schema["info"]["title"] in browser.evaluate("document.querySelector('.api-content h1').innerText")
    assert background(browser, ".menu-content") != TRANSPARENT  # ReDoc's runtime styles ran
    check_page(browser, web.origin, violations=[REDOC_LOGO])
    browser.screenshot(tmp_path / "redoc.png")


def test_the_policy_stops_an_injected_inline_script_and_the_recorder_sees_it(web, browser, settings):
    """The control for the test above: what the recorder reports is what the browser enforced."""
    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS
    UserFactory(username="csp-ops", is_staff=True, is_superuser=True, password=PASSWORD)
    log_in(browser, web.origin, "csp-ops")
    browser.evaluate(
        "const s = document.createElement('script'); s.textContent = 'window.__injected = true';"
        "document.body.appendChild(s); true"
    )
    wait_true(browser, "window.__cspViolations.length > 0", "the violation to be reported")
    assert browser.evaluate("window.__injected === undefined")
    (violation,) = browser.evaluate("window.__cspViolations")
    assert violation["directive"] == "script-src-elem" and violation["blocked"] == "inline"
