"""Shared API building blocks: strict input serializers and list pagination."""

from __future__ import annotations

from rest_framework import serializers
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
