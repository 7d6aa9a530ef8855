"""Output shapes for the dead-letter queue, shared by the API and the `dlq` command's --json."""

from __future__ import annotations

from rest_framework import serializers

from dlq.models import DeadLetter


class DeadLetterOutputSerializer(serializers.ModelSerializer):
    # job_uuid, not the FK: a deleted job's entry still says which job it was
    job_id = serializers.UUIDField(source="job_uuid", read_only=True)

    class Meta:
        model = DeadLetter
        fields = (
            "id",
            "job_id",
            "error_type",
            "error_message",
            "retryable",
            "attempts",
            "provider",
            "model",
            "status",
            "created_at",
            "resolved_at",
        )


class DeadLetterStatsSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    open = serializers.IntegerField()
    retryable = serializers.IntegerField()
    non_retryable = serializers.IntegerField()
    by_error_type = serializers.DictField(child=serializers.IntegerField())
    by_provider = serializers.DictField(child=serializers.IntegerField())
    by_model = serializers.DictField(child=serializers.IntegerField())
    oldest_at = serializers.DateTimeField(allow_null=True)
    newest_at = serializers.DateTimeField(allow_null=True)


class DeadLetterRetryOutputSerializer(serializers.Serializer):
    dlq_id = serializers.IntegerField()
    job_id = serializers.UUIDField()
    status = serializers.CharField()


class BulkRetryOutputSerializer(serializers.Serializer):
    retried = serializers.IntegerField()
    skipped = serializers.IntegerField()
