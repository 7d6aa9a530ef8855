"""Project-level views: version, and JSON errors for /api/ paths outside DRF views."""

from __future__ import annotations

import json
from functools import lru_cache

from django.conf import settings
from django.http import JsonResponse
from django.views.csrf import csrf_failure as default_csrf_failure
from django.views.decorators.csrf import csrf_exempt
from django.views.defaults import page_not_found
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import parsers, serializers
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from aipb.api import JSONParser, error_responses
from aipb.exceptions import error_body


@lru_cache(maxsize=1)
def build_info() -> dict:
    """version.json at the repo root, written by the build (`make version.json`)."""
    try:
        data = json.loads((settings.BASE_DIR / "version.json").read_text())
    except (OSError, ValueError):
        data = {}
    return {
        "version": str(data.get("version", "0.0.0+unknown")),
        "commit": str(data.get("commit", "unknown")),
        "build_date": str(data.get("build_date", "unknown")),
    }


class VersionApi(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(
        responses=inline_serializer(
            "Version",
            {
                "version": serializers.CharField(),
                "commit": serializers.CharField(),
                "build_date": serializers.CharField(),
            },
        )
    )
    def get(self, request):
        return Response(build_info())


@csrf_exempt  # nothing to protect; a POST to a wrong URL is a 404, not Django's HTML CSRF page
def api_not_found(request, *args, **kwargs):
    return JsonResponse(error_body("not_found", f"no API endpoint at {request.path}"), status=404)


def not_found(request, exception=None):
    if request.path.startswith("/api/"):
        return api_not_found(request)
    return page_not_found(request, exception)


def csrf_failure(request, reason: str = ""):
    """CSRF_FAILURE_VIEW: the error shape under /api/, Django's page elsewhere (DRF views report their own)."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("permission_denied", f"CSRF check failed: {reason}"), status=403)
    return default_csrf_failure(request, reason=reason)


class AuthTokenApi(ObtainAuthToken):
    """DRF's token view (username and password in, the user's API token out), with its errors documented."""

    parser_classes = (parsers.FormParser, parsers.MultiPartParser, JSONParser)

    @extend_schema(responses={200: AuthTokenSerializer, **error_responses(400, 413, 415)})
    def post(self, request, *args, **kwargs):
        return super().post(request, *args, **kwargs)
