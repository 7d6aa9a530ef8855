"""aipb.middleware.CSPMiddleware: the policy headers built from the settings once, and exactly as django-csp
builds them, on every path where they may differ: a changed setting, a nonce, a view's own policy, exempt and
excluded responses. (The headers against a browser: tests/ops/test_static_and_docs.py.)"""

from __future__ import annotations

import pytest
from csp.constants import HEADER, HEADER_REPORT_ONLY, SELF
from csp.decorators import csp_exempt, csp_update
from csp.exceptions import CSPNonceError
from csp.middleware import CSPMiddleware as DjangoCSPMiddleware
from django.http import HttpResponse
from django.test import Client, RequestFactory

from aipb.middleware import CSPMiddleware


def view(request):
    return HttpResponse("page")


def nonce_view(request):
    return HttpResponse(f"<script nonce='{request.csp_nonce}'></script>")  # as a template asks for it


def served(middleware_class, handler, path: str = "/page"):
    request = RequestFactory().get(path)
    return request, middleware_class(handler)(request)


def headers(response) -> tuple[str | None, str | None]:
    return response.get(HEADER), response.get(HEADER_REPORT_ONLY)


@pytest.mark.parametrize(
    "handler",
    [view, nonce_view, csp_update({"worker-src": [SELF, "blob:"]})(view), csp_exempt()(view)],
    ids=["settings only", "nonce", "a view's update", "exempt"],
)
def test_the_headers_are_django_csps_own(handler):
    for _ in range(2):  # built, then from what was built
        _, ours = served(CSPMiddleware, handler)
        _, theirs = served(DjangoCSPMiddleware, handler)
        if handler is nonce_view:  # a nonce of each request's own, in the same place
            assert "'nonce-" in ours[HEADER] and ours[HEADER] != theirs[HEADER]
            assert ours[HEADER].split("'nonce-")[0] == theirs[HEADER].split("'nonce-")[0]
        else:
            assert headers(ours) == headers(theirs)
    assert "default-src 'self'" in headers(served(CSPMiddleware, view)[1])[0]


def test_a_changed_setting_is_seen_at_the_next_response(settings):
    settings.CONTENT_SECURITY_POLICY = {"DIRECTIVES": {"default-src": ["https://other.example"]}}
    assert headers(served(CSPMiddleware, view)[1]) == ("default-src https://other.example", None)
    settings.CONTENT_SECURITY_POLICY_REPORT_ONLY = {
        "DIRECTIVES": {"default-src": [SELF]},
        "EXCLUDE_URL_PREFIXES": ["/skipped"],
    }
    assert headers(served(CSPMiddleware, view)[1]) == ("default-src https://other.example", "default-src 'self'")
    assert headers(served(CSPMiddleware, view, "/skipped/x")[1]) == ("default-src https://other.example", None)
    settings.CONTENT_SECURITY_POLICY["DIRECTIVES"]["default-src"] = [SELF]  # changed in place, too
    assert headers(served(CSPMiddleware, view)[1])[0] == "default-src 'self'"
    del settings.CONTENT_SECURITY_POLICY_REPORT_ONLY
    assert headers(served(CSPMiddleware, view)[1]) == ("default-src 'self'", None)


def test_the_nonce_asked_for_after_the_header_is_an_error():
    request, _ = served(CSPMiddleware, view)
    with pytest.raises(CSPNonceError):
        str(request.csp_nonce)


def test_every_response_of_the_stack_carries_it(db):
    response = Client().get("/api/version")
    assert response.status_code == 200
    assert "script-src 'self'" in response[HEADER] and "nonce" not in response[HEADER]
