"""Shared API building blocks: strict input serializers and list pagination."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import parsers, serializers
from rest_framework.exceptions import ParseError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response


class StrictSerializer(serializers.Serializer):
    """Unknown fields are an error, not silently dropped."""

    def validate(self, attrs):
        if hasattr(self, "initial_data") and hasattr(self.initial_data, "keys"):
            unknown = sorted(set(self.initial_data.keys()) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["unknown field"] for name in unknown})
        return attrs


class ListParams(StrictSerializer):
    limit = serializers.IntegerField(min_value=1, max_value=500, required=False, default=50)
    offset = serializers.IntegerField(min_value=0, max_value=10_000_000, required=False, default=0)


def parse_query(serializer_class: type[serializers.Serializer], request) -> dict:
    data = serializer_class(data=request.query_params.dict())
    data.is_valid(raise_exception=True)
    return data.validated_data


class Pagination(LimitOffsetPagination):
    default_limit = 50
    max_limit = 500

    def paginate(self, queryset, request, *, limit: int, offset: int, serializer_class) -> Response:
        self.request = request
        self.limit = limit
        self.offset = offset
        self.count = self.get_count(queryset)
        page = list(queryset[offset : offset + limit]) if self.count > offset else []
        return self.get_paginated_response(serializer_class(page, many=True).data)


# --- OpenAPI: the error shape and the error responses each view declares ---


class ErrorBodySerializer(serializers.Serializer):
    type = serializers.CharField()
    message = serializers.CharField()
    details = serializers.JSONField(allow_null=True)


class ErrorSerializer(serializers.Serializer):
    """Every /api/ error: {"error": {"type", "message", "details"}} (aipb.exceptions)."""

    error = ErrorBodySerializer()


def _error_response(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ErrorSerializer, description=description)


ERROR_RESPONSES = {
    400: _error_response("invalid input: unknown or malformed parameter, body or header"),
    401: _error_response("no credentials, or credentials that are not valid"),
    403: _error_response("not allowed: staff only, or a session request without a CSRF token"),
    404: _error_response("no such object (or not yours)"),
    409: _error_response("the object is not in a state that allows this"),
    413: _error_response("request body over AI_MAX_REQUEST_BYTES"),
    415: _error_response("request body is not application/json"),
    429: _error_response("too many submissions: wait Retry-After seconds"),
    503: _error_response("intake closed by an operator, or the database unavailable: wait Retry-After seconds"),
}


def error_responses(*codes: int) -> dict:
    """``responses={200: Out, **error_responses(400, 404)}``; 401 and 403 are always included
    (every endpoint but /api/version needs credentials, and session requests need a CSRF token)."""
    return {code: ERROR_RESPONSES[code] for code in sorted({401, 403, *codes})}


def paginated(serializer_class: type[serializers.Serializer], name: str):
    """The body Pagination.paginate returns, for @extend_schema (APIViews are not paginated by drf-spectacular)."""
    return inline_serializer(
        name,
        {
            "count": serializers.IntegerField(),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": serializer_class(many=True),
        },
    )


class _StrictSerializerSchema(OpenApiSerializerExtension):
    """A StrictSerializer refuses unknown fields: its request schema says so (additionalProperties: false)."""

    target_class = StrictSerializer
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_basic_serializer(self.target, direction)
        if direction == "request":
            schema["additionalProperties"] = False
        return schema


# --- JSON bodies: exact JSON types ---

# DRF converts quietly (5 -> "5" for a CharField, "5" -> 5 for an IntegerField, "yes" -> True for a
# BooleanField); a JSON body must carry the type the schema documents. Query strings are all text, so
# parse_query keeps DRF's conversions.
_JSON_TYPES = (
    (serializers.BooleanField, bool, "a boolean"),
    (serializers.IntegerField, int, "an integer"),
    (serializers.FloatField, (int, float), "a number"),
    (serializers.CharField, str, "a string"),
)


def _wants_text(field: serializers.Field) -> bool:
    """A single choice among text choices (our enums); a number or a list is not one of them."""
    return (
        isinstance(field, serializers.ChoiceField)
        and not isinstance(field, serializers.MultipleChoiceField)
        and all(isinstance(choice, str) for choice in field.choices)
    )


def _json_type_errors(serializer: serializers.Serializer, data: object) -> dict:
    if not hasattr(data, "items"):
        return {}  # not an object: the serializer itself says so
    errors = {}
    for name, field in serializer.fields.items():
        value = data.get(name)
        if value is None or field.read_only:
            continue
        for field_class, json_type, label in _JSON_TYPES:
            if isinstance(field, field_class):
                if not isinstance(value, json_type) or (json_type is not bool and isinstance(value, bool)):
                    errors[name] = [f"must be {label}"]
                break
        if _wants_text(field) and not isinstance(value, str):
            errors[name] = ["must be a string"]
        if name in errors or not isinstance(value, str):
            continue
        # the documented maxLength holds for the text as sent, not after DRF trims whitespace off it
        max_length = getattr(field, "max_length", None)
        if max_length is not None and len(value) > max_length:
            errors[name] = [f"must be at most {max_length} characters"]
        try:
            value.encode("utf-8")  # JSON's "\ud800" decodes to a lone surrogate no database or Redis can store
        except UnicodeEncodeError:
            errors[name] = ["must be valid Unicode text (no lone surrogates)"]
    return errors


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, but JSON nested deeper than Python can recurse is a 400, not a RecursionError (500)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply") from None


def parse_body(serializer_class: type[serializers.Serializer], data: object) -> dict:
    """Validate a parsed JSON request body (``request.data``) with exact JSON types."""
    serializer = serializer_class(data=data)
    errors = _json_type_errors(serializer, data)
    if errors:
        raise serializers.ValidationError(errors)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data
