"""Service errors and the one DRF exception handler that renders every /api/ error in one shape:

{"error": {"type": "...", "message": "...", "details": ...}}
"""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler


class ServiceError(Exception):
    """Raised by services; views and commands turn it into a 4xx (or a 503) or a CommandError."""

    status_code = status.HTTP_400_BAD_REQUEST
    error_type = "invalid_request"

    def __init__(self, message: str, *, details: object = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.retry_after = retry_after


class InvalidInput(ServiceError):
    pass


class NotFound(ServiceError):
    status_code = status.HTTP_404_NOT_FOUND
    error_type = "not_found"


class Conflict(ServiceError):
    status_code = status.HTTP_409_CONFLICT
    error_type = "conflict"


class Forbidden(ServiceError):
    """The caller may not do this (a permission it lacks); the same type as DRF's permission refusals."""

    status_code = status.HTTP_403_FORBIDDEN
    error_type = "permission_denied"


class TooManyQueued(ServiceError):
    """The owner has as many jobs waiting as their cap allows: submit again once some have started."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    error_type = "too_many_queued"


class IntakeClosed(ServiceError):
    """An operator closed intake (`manage.py queue intake off`): submissions wait, workers keep draining."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    error_type = "intake_closed"


_TYPES = {
    exceptions.ValidationError: "validation_error",
    exceptions.ParseError: "parse_error",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "throttled",
}


def error_body(error_type: str, message: str, details: object = None) -> dict:
    return {"error": {"type": error_type, "message": message, "details": details}}


def _message_of(detail: object) -> str:
    if isinstance(detail, dict):
        for key, value in detail.items():
            inner = _message_of(value)
            return inner if key in ("non_field_errors", "detail") else f"{key}: {inner}"
        return "invalid input"
    if isinstance(detail, list):
        return _message_of(detail[0]) if detail else "invalid input"
    return str(detail)


# While Postgres is down (stopped, restarting, failing over) a request cannot be served, but it is not a
# server bug either: every /api/ answer is a 503 in the error shape, with a hint of when to come back.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)
DATABASE_RETRY_AFTER_SECONDS = 5


def database_unavailable_body() -> dict:
    return error_body("service_unavailable", "the database is unavailable; try again shortly")


def server_error_body(request_id: str) -> dict:
    """An /api/ 500 (aipb.middleware.RequestIdMiddleware): nothing about the bug, the id that finds it in the logs."""
    return error_body(
        "server_error",
        f"internal server error; quote request id {request_id} when you report it",
        {"request_id": request_id},
    )


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, DATABASE_UNAVAILABLE):
        response = Response(database_unavailable_body(), status=status.HTTP_503_SERVICE_UNAVAILABLE)
        response["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
        return response
    if isinstance(exc, ServiceError):
        response = Response(error_body(exc.error_type, exc.message, exc.details), status=exc.status_code)
        if exc.retry_after is not None:
            response["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None  # a real server error: aipb.middleware.RequestIdMiddleware logs it and answers the 500
    error_type = next((name for cls, name in _TYPES.items() if isinstance(exc, cls)), "error")
    detail = response.data
    details = detail if isinstance(exc, exceptions.ValidationError) else None
    message = _message_of(detail)
    if isinstance(exc, exceptions.ValidationError):
        message = f"invalid input: {message}"
    response.data = error_body(error_type, message, details)
    return response
