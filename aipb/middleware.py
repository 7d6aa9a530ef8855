"""Refuse oversized API bodies before anything reads them (DRF streams past Django's own limit)."""

from __future__ import annotations

from django.conf import settings
from django.http import JsonResponse

from aipb.exceptions import error_body


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
