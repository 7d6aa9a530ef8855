"""Project-level views: version, and JSON errors for /api/ paths outside DRF views."""

from __future__ import annotations

import json
from functools import lru_cache

from django.conf import settings
from django.http import JsonResponse
from django.views.csrf import csrf_failure as default_csrf_failure
from django.views.decorators.csrf import csrf_exempt
from django.views.defaults import page_not_found
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import parsers, serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from aipb import login_throttle
from aipb.api import ErrorSerializer, JSONParser, error_responses
from aipb.exceptions import ServiceError, error_body


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
        ),
        summary="The build this server runs",
        description="Version, commit and build date, without credentials: for deploy checks and monitoring.",
        examples=[
            OpenApiExample(
                "a build",
                value={"version": "0.1.0", "commit": "9ba4826", "build_date": "2026-12-03T10:00:00Z"},
                response_only=True,
            )
        ],
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


class LoginLockedOut(ServiceError):
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    error_type = "locked_out"


class AuthTokenInput(AuthTokenSerializer):
    # Bounded like the user model's field: axes keeps the name it counts (255 characters at most), and a
    # password a megabyte long would cost a megabyte of hashing for nothing.
    username = serializers.CharField(label="Username", max_length=150, write_only=True)
    password = serializers.CharField(
        label="Password", max_length=4096, style={"input_type": "password"}, trim_whitespace=False, write_only=True
    )

    def validate(self, attrs):
        self.username = attrs.get("username")  # the name axes counts, for the answer to a locked-out pair
        return super().validate(attrs)


LOCKED_OUT_RESPONSE = OpenApiResponse(
    response=ErrorSerializer,
    description="too many failed logins for this username from this address (type locked_out): wait Retry-After "
    "seconds, or ask an operator to reset the lockout; the password is not checked meanwhile",
)


class AuthTokenApi(ObtainAuthToken):
    """DRF's token view (username and password in, the user's API token out), behind django-axes' lockout."""

    parser_classes = (parsers.FormParser, parsers.MultiPartParser, JSONParser)
    serializer_class = AuthTokenInput

    @extend_schema(
        request=AuthTokenInput,
        responses={200: AuthTokenSerializer, 429: LOCKED_OUT_RESPONSE, **error_responses(400, 413, 415)},
        summary="Exchange a username and password for the user's API token",
        description="Send the token as `Authorization: Token <token>`. After AIPB_LOGIN_FAILURE_LIMIT failures "
        "for one username from one address the pair is locked: 429 with Retry-After, even for the right password.",
        examples=[
            OpenApiExample("credentials", value={"username": "alice", "password": "correct-horse"}, request_only=True),
            OpenApiExample(
                "the token", value={"token": "9944b09199c62bcf9418ad846dd0e4bbdfc6ee4b"}, response_only=True
            ),
        ],
    )
    def post(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        try:
            serializer.is_valid(raise_exception=True)
        except serializers.ValidationError:
            # axes marks the request when the pair was locked (authenticate refused it before any password
            # check) or when this failure reached the limit: either way the client must wait, not guess on
            if getattr(request, "axes_locked_out", False):
                seconds = login_throttle.seconds_left(request, username=serializer.username)
                raise LoginLockedOut(
                    f"too many failed logins for this username from this address; try again in {seconds} seconds",
                    details={"retry_after": seconds, "failure_limit": settings.AXES_FAILURE_LIMIT},
                    retry_after=seconds,
                ) from None
            raise
        login_throttle.login_succeeded(request, username=serializer.username)
        token, _ = Token.objects.get_or_create(user=serializer.validated_data["user"])
        return Response({"token": token.key})
