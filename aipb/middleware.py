"""Request guards: a request id on every request, its log lines and an /api/ 500 in the error shape; oversized
API bodies refused before anything reads them (DRF streams past Django's own limit); a database outage
answered with a 503 instead of a 500 page outside DRF's views too; django-csp's policy headers built once."""

from __future__ import annotations

import copy
import logging
import re
import threading
import uuid
from http import HTTPStatus

from csp.constants import HEADER, HEADER_REPORT_ONLY
from csp.middleware import CheckableLazyObject
from csp.middleware import CSPMiddleware as _DjangoCSPMiddleware
from csp.utils import build_policy
from django.conf import settings
from django.http import HttpResponse, JsonResponse

from aipb.exceptions import (
    DATABASE_RETRY_AFTER_SECONDS,
    DATABASE_UNAVAILABLE,
    database_unavailable_body,
    error_body,
    server_error_body,
)
from aipb.logs import request_id_var

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
# A proxy's or caller's id is kept when it is a plain token; anything else (a log-line forgery, a megabyte)
# gets a fresh one.
_INCOMING_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIdMiddleware:
    """Each request gets an id (the caller's X-Request-ID when it is a plain token, else a new one): every line
    logged while it is served carries it (aipb.logs), the response returns it in X-Request-ID, and an /api/ 500
    answers in the error shape with it, so a caller's report finds the traceback in the logs."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.META.get("HTTP_X_REQUEST_ID", "")
        request.request_id = incoming if _INCOMING_ID.fullmatch(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request.request_id)
        try:
            response = self.get_response(request)
            if response.status_code == 500 and request.path.startswith("/api/") and not _is_json(response):
                # a 500 raised outside the view (a middleware below this one): Django rendered its HTML page
                # and logged the traceback already; the caller still gets the error shape
                response = _server_error(request)
        finally:
            request_id_var.reset(token)
        response[REQUEST_ID_HEADER] = request.request_id
        return response

    def process_exception(self, request, exception):
        """Last of the process_exception hooks (it is the first middleware of ours): what reaches it is a bug."""
        if not request.path.startswith("/api/"):
            return None  # Django's own 500 page (and its log line, with the request id)
        log.error(
            "unhandled %s on %s %s",
            exception.__class__.__name__,
            request.method,
            request.path,
            exc_info=(type(exception), exception, exception.__traceback__),
        )
        return _server_error(request)


def _is_json(response) -> bool:
    return response.get("Content-Type", "").startswith("application/json")


def _server_error(request) -> JsonResponse:
    response = JsonResponse(server_error_body(request.request_id), status=500)
    # Django logs every 5xx response once more, without the traceback; the line above has it
    response._has_been_logged = True
    return response


class ApiBodySizeLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/"):
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return JsonResponse(error_body("invalid_request", "Content-Length is not a number"), status=400)
            if length > limit:
                return JsonResponse(
                    error_body("request_too_large", f"request body is over {limit} bytes", {"limit": limit}),
                    status=413,
                )
        return self.get_response(request)


class DatabaseUnavailableMiddleware:
    """A view that hits a database outage (the admin's session lookup, a DRF view's authentication when
    DRF's handler is not in the way) answers 503 with Retry-After: the error shape under /api/, a plain
    page elsewhere. Nothing was written: each write is one transaction, and it did not commit."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, DATABASE_UNAVAILABLE):
            return None
        log.warning("database unavailable for %s %s: %s", request.method, request.path, exception)
        if request.path.startswith("/api/"):
            response = JsonResponse(database_unavailable_body(), status=503)
        else:
            response = HttpResponse(
                "503 Service Unavailable: the database is unavailable; try again shortly.\n",
                status=503,
                content_type="text/plain; charset=utf-8",
            )
        response["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
        return response


# what a view or a template can change a response's policy with (django-csp's decorators, the nonce)
_PER_RESPONSE = ("_csp_config", "_csp_update", "_csp_replace", "_csp_config_ro", "_csp_update_ro", "_csp_replace_ro")
_POLICY_SETTINGS = ("CONTENT_SECURITY_POLICY", "CONTENT_SECURITY_POLICY_REPORT_ONLY")


class CSPMiddleware(_DjangoCSPMiddleware):
    """django-csp's middleware, with the policy a response gets from the settings alone built once per process
    (again when the settings change): django-csp builds both headers from the settings on every response,
    0.1 ms of CPU, a tenth of a GET /api/ai/jobs/{id} (bench.api's profile). A response whose template used the
    nonce, or whose view changed its policy (csp.decorators), is built by django-csp itself."""

    _lock = threading.Lock()
    _built: tuple[tuple, tuple[str, str]] | None = None  # (the settings it was built from, the two headers)

    def process_response(self, request, response):
        if getattr(request, "_csp_nonce", None) is not None or any(hasattr(response, a) for a in _PER_RESPONSE):
            return super().process_response(request, response)
        if response.status_code in (HTTPStatus.INTERNAL_SERVER_ERROR, HTTPStatus.NOT_FOUND) and settings.DEBUG:
            return response
        configs = tuple(getattr(settings, name, None) for name in _POLICY_SETTINGS)
        for header, policy, exempt, config in zip(
            (HEADER, HEADER_REPORT_ONLY),
            self._policies(configs),
            ("_csp_exempt", "_csp_exempt_ro"),
            configs,
            strict=True,
        ):
            if not policy or header in response or getattr(response, exempt, False) is not False:
                continue
            if not request.path_info.startswith(tuple((config or {}).get("EXCLUDE_URL_PREFIXES", None) or ())):
                response[header] = policy
        # as django-csp: once the header is written, a template asking for the nonce is an error
        request.csp_nonce = CheckableLazyObject(self._csp_nonce_post_response)
        return response

    @classmethod
    def _policies(cls, configs: tuple) -> tuple[str, str]:
        built = cls._built
        if built is not None and built[0] == configs:  # equal, not the same: a changed setting is seen
            return built[1]
        with cls._lock:
            policies = (build_policy(), build_policy(report_only=True))
            cls._built = (copy.deepcopy(configs), policies)
        return policies
