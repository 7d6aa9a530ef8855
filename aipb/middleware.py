"""Request guards: oversized API bodies refused before anything reads them (DRF streams past Django's own
limit); a database outage answered with a 503 instead of a 500 page outside DRF's views too."""

from __future__ import annotations

import logging

from django.conf import settings
from django.http import HttpResponse, JsonResponse

from aipb.exceptions import DATABASE_RETRY_AFTER_SECONDS, DATABASE_UNAVAILABLE, database_unavailable_body, error_body

log = logging.getLogger(__name__)


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
