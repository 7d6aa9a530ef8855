"""Output shapes for jobs, shared by the API and the `jobs` command's --json."""

from __future__ import annotations

from rest_framework import serializers

from jobs.models import ATTEMPT_FIELDS, AIJob, JobAttempt


class AttemptOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobAttempt
        fields = ATTEMPT_FIELDS


class JobSummarySerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", read_only=True)

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
        )


class JobOutputSerializer(JobSummarySerializer):
    attempt_history = AttemptOutputSerializer(source="attempt_set", many=True, read_only=True)
    result = serializers.JSONField(read_only=True)

    class Meta(JobSummarySerializer.Meta):
        fields = (*JobSummarySerializer.Meta.fields, "result", "attempt_history")
