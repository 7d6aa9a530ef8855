"""Output shapes for jobs, shared by the API and the `jobs` command's --json."""

from __future__ import annotations

from functools import cache

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from aipb import tracing
from jobs.models import ATTEMPT_FIELDS, AIJob, JobAttempt, JobStatus
from jobs.providers.simulated import _INT_FIELDS as SIMULATE_INT_FIELDS
from jobs.providers.simulated import SIMULATED_ERRORS
from jobs.schema import PAGE_SCHEMA


def _openapi(schema: dict) -> dict:
    """A JSON Schema as OpenAPI 3.0 takes it: `$ref`s to `$defs` inlined (the page schema uses each once),
    the keywords OpenAPI 3.0 lacks ($schema, $defs) dropped."""
    defs = schema.get("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[1]])
            return {key: inline(value) for key, value in node.items() if key not in ("$schema", "$defs")}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return inline(schema)


@extend_schema_field(
    {
        **_openapi(PAGE_SCHEMA),
        "nullable": True,
        "description": "The page the model generated, as the page schema (jobs/schema/page.schema.json) has it; "
        "null until the job succeeds.",
    }
)
class PageField(serializers.JSONField):
    pass


# What the providers read from `options` (jobs/providers). Values are stored as given and a provider ignores one
# out of its range, so only `simulate`, which submission checks, is typed.
@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": True,
        "description": "Per-job options for the provider call; other keys are kept and ignored.",
        "properties": {
            "max_tokens": {"description": "most completion tokens: an integer from 1 to 1,000,000, else ignored"},
            "temperature": {"description": "sampling temperature: a number from 0 to 2, else ignored"},
            "simulate": {
                "type": "object",
                "additionalProperties": False,
                "description": "the simulated provider's behaviour (with AI_ENABLE_SIMULATED_PROVIDER): fail the "
                "first fail_attempts attempts with error, answer after latency_ms, report these token counts",
                "properties": {
                    **{
                        name: {"type": "integer", "minimum": 0, "maximum": maximum}
                        for name, maximum in SIMULATE_INT_FIELDS.items()
                    },
                    "error": {"type": "string", "enum": list(SIMULATED_ERRORS)},
                },
            },
        },
    }
)
class OptionsField(serializers.JSONField):
    pass


@extend_schema_field(
    {
        "type": "object",
        "nullable": True,
        "properties": {"provider": {"type": "string"}, "model": {"type": "string"}},
        "description": "The target that produced the result: the job's own provider and model, or one of its "
        "fallbacks; null until the job succeeds.",
    }
)
class ServedByField(serializers.Field):
    def __init__(self, **kwargs):
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, job: AIJob) -> dict | None:
        if job.status != JobStatus.SUCCEEDED or not job.served_provider:
            return None
        return {"provider": job.served_provider, "model": job.served_model}


class AttemptOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobAttempt
        fields = ATTEMPT_FIELDS


class JobSummarySerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", read_only=True)
    options = OptionsField(read_only=True)
    served_by = ServedByField()

    class Meta:
        model = AIJob
        fields = (
            "id",
            "status",
            "provider",
            "model",
            "priority",
            "prompt",
            "options",
            "attempts",
            "max_attempts",
            "error_type",
            "error_message",
            "created_at",
            "started_at",
            "finished_at",
            "next_attempt_at",
            "owner",
            "fallbacks",
            "routing_policy",
            "served_by",
        )


class JobOutputSerializer(JobSummarySerializer):
    attempt_history = AttemptOutputSerializer(source="attempt_set", many=True, read_only=True)
    result = PageField(read_only=True)
    # The job's trace (the submitting request's and every attempt's: aipb.tracing); "" when it was not traced.
    trace_id = serializers.SerializerMethodField()
    trace_url = serializers.SerializerMethodField()

    class Meta(JobSummarySerializer.Meta):
        fields = (*JobSummarySerializer.Meta.fields, "result", "trace_id", "trace_url", "attempt_history")

    def get_trace_id(self, job: AIJob) -> str:
        return tracing.trace_id_of(job.traceparent)

    def get_trace_url(self, job: AIJob) -> str:
        return tracing.trace_url(tracing.trace_id_of(job.traceparent), settings.AIPB_TRACE_URL_TEMPLATE)


class _JobWithoutAttemptsSerializer(JobOutputSerializer):
    attempt_history = None

    class Meta(JobOutputSerializer.Meta):
        fields = (*JobSummarySerializer.Meta.fields, "result", "trace_id", "trace_url")


@cache
def _built(serializer_class: type[serializers.Serializer]) -> serializers.Serializer:
    return serializer_class()


def job_output(job: AIJob) -> dict:
    """``JobOutputSerializer(job).data``, from serializers built once per process: a ModelSerializer builds its
    fields from the model each time one is constructed (the largest part of a GET's CPU before; bench.api's
    profile mode), and ``to_representation`` keeps nothing between calls.

    A job that never had an attempt (``attempts`` counts every attempt of its life, and each JobAttempt row is
    one of them) has an empty history without asking the database: a job just submitted, or one still queued."""
    if job.attempts == 0:
        return {**_built(_JobWithoutAttemptsSerializer).to_representation(job), "attempt_history": []}
    return _built(JobOutputSerializer).to_representation(job)
