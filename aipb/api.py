"""Shared API building blocks: strict input serializers, list pagination, token authentication."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache, cached_property

from django.db import connections, router
from django.db.models import Model
from django.utils.translation import gettext as _
from drf_spectacular.extensions import OpenApiSerializerExtension
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import authentication, parsers, serializers
from rest_framework.exceptions import AuthenticationFailed, ErrorDetail, ParseError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.response import Response
from rest_framework.settings import api_settings

from aipb import prepared


class StrictSerializer(serializers.Serializer):
    """Unknown fields are an error, not silently dropped (once the known ones are valid)."""

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        unknown = sorted(set(data.keys()) - set(self.fields))  # data is a mapping: super() said so
        if unknown:
            raise serializers.ValidationError({name: ["unknown field"] for name in unknown})
        return value


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
    """Validate a parsed JSON request body (``request.data``) with exact JSON types; the errors are
    ``serializer_class(data=data).is_valid(raise_exception=True)``'s."""
    serializer = _body_serializer(serializer_class)
    errors = _json_type_errors(serializer, data)
    if errors:
        raise serializers.ValidationError(errors)
    if data is None:  # a JSON null: is_valid's own wording, rather than the field's "may not be null"
        raise serializers.ValidationError(
            {api_settings.NON_FIELD_ERRORS_KEY: [ErrorDetail("No data provided", "null")]}
        )
    return serializer.run_validation(data)


_body_serializers = threading.local()


def _body_serializer(serializer_class: type[serializers.Serializer]) -> serializers.Serializer:
    """One instance of each input serializer per thread, its fields built once: DRF deep-copies every declared
    field each time a serializer is constructed (0.2 ms of a submission's 2.3 ms of CPU; bench.api).
    ``run_validation`` keeps nothing on the instance; a per-thread one also keeps what a validate() would."""
    built = _body_serializers.__dict__.setdefault("by_class", {})
    serializer = built.get(serializer_class)
    if serializer is None:
        serializer = built[serializer_class] = serializer_class()
    return serializer


# --- reads on the hot paths: SQL written once per process ---


class PreparedGet:
    """``model.objects.select_related(related).get(**where)`` (``related`` a required foreign key: the join is
    INNER) with its SQL written once per process: Django compiles a query every time one runs, and for these
    short joins its compiler costs more CPU (0.2-0.4 ms) than Postgres spends answering (bench.api's profile
    mode), and the statement is prepared on its connection (aipb.prepared). ``where`` names fields that together
    match at most one row (a unique key); values are prepared for the database as the ORM prepares them (so a
    malformed UUID raises as it would there), and columns the ORM converts on the way out (JSON) are converted
    alike."""

    def __init__(self, model: type[Model], *, related: str, where: tuple[str, ...]) -> None:
        self.model = model
        self.related = related
        self.where = where

    @cached_property
    def _plan(self) -> _Plan:
        db = router.db_for_read(self.model)
        connection = connections[db]
        qn = connection.ops.quote_name
        fk = self.model._meta.get_field(self.related)
        related_model = fk.related_model
        own, theirs = self.model._meta.concrete_fields, related_model._meta.concrete_fields
        a, b = qn(self.model._meta.db_table), qn(related_model._meta.db_table)
        where = [self.model._meta.get_field(name) for name in self.where]
        sql = (
            f"SELECT {', '.join([f'{a}.{qn(f.column)}' for f in own] + [f'{b}.{qn(f.column)}' for f in theirs])} "
            f"FROM {a} INNER JOIN {b} ON ({a}.{qn(fk.column)} = {b}.{qn(fk.target_field.column)}) "
            f"WHERE {' AND '.join(f'{a}.{qn(f.column)} = %s' for f in where)}"
        )
        converters = []  # as the compiler finds them: the backend's, then the field's
        for i, col in enumerate(f.cached_col for f in (*own, *theirs)):
            if found := connection.ops.get_db_converters(col) + col.get_db_converters(connection):
                converters.append((i, found, col))
        return _Plan(
            db=db,
            sql=sql,
            where=tuple(where),
            fields=tuple(f.attname for f in own),
            related_model=related_model,
            related_fields=tuple(f.attname for f in theirs),
            converters=tuple(converters),
        )

    def get(self, **values: object) -> Model | None:
        plan = self._plan
        connection = connections[plan.db]
        params = [
            field.get_db_prep_value(value.pk if isinstance(value, Model) else value, connection)
            for field, value in zip(plan.where, (values[name] for name in self.where), strict=True)
        ]
        with prepared.cursor(plan.db) as cursor:
            cursor.execute(plan.sql, params)
            row = cursor.fetchone()
        if row is None:
            return None
        if plan.converters:
            row = list(row)
            for i, converters, col in plan.converters:
                for convert in converters:
                    row[i] = convert(row[i], col, connection)
        n = len(plan.fields)
        obj = self.model.from_db(plan.db, plan.fields, row[:n])
        setattr(obj, self.related, plan.related_model.from_db(plan.db, plan.related_fields, row[n:]))
        return obj


@dataclass(frozen=True)
class _Plan:
    db: str
    sql: str
    where: tuple
    fields: tuple[str, ...]
    related_model: type[Model]
    related_fields: tuple[str, ...]
    converters: tuple


# --- token authentication ---


class TokenAuthentication(authentication.TokenAuthentication):
    """DRF's token authentication (the same header, errors and refusal of inactive users), its one query a
    PreparedGet: DRF builds and compiles ``Token.objects.select_related("user").get(key=...)`` on every request,
    0.46 ms of CPU where the same join costs 0.14 ms (bench.api)."""

    def authenticate_credentials(self, key):
        token = _token_lookup(self.get_model()).get(key=key)
        if token is None:
            raise AuthenticationFailed(_("Invalid token."))
        if not token.user.is_active:
            raise AuthenticationFailed(_("User inactive or deleted."))
        return token.user, token


@cache
def _token_lookup(model: type[Model]) -> PreparedGet:
    return PreparedGet(model, related="user", where=("key",))
