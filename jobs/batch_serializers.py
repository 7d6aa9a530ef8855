"""Output shape of a batch, shared by the API and the `batches` command's --json."""

from __future__ import annotations

from rest_framework import serializers

from jobs.batch_selectors import BatchView


class BatchCountsSerializer(serializers.Serializer):
    queued = serializers.IntegerField()
    running = serializers.IntegerField()
    retrying = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    dead = serializers.IntegerField()
    canceled = serializers.IntegerField()


class BatchOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField(source="batch.id")
    status = serializers.CharField(source="batch.status", help_text="running, completed (every job final) or canceled")
    total = serializers.IntegerField(source="batch.total", help_text="jobs in the batch")
    counts = BatchCountsSerializer(help_text="its jobs by status")
    cost_usd = serializers.CharField(help_text="priced cost of every provider call its jobs made, USD")
    created_at = serializers.DateTimeField(source="batch.created_at")
    finished_at = serializers.DateTimeField(
        source="batch.finished_at", allow_null=True, help_text="when its last job reached a final state"
    )
    metadata = serializers.JSONField(source="batch.metadata")
    owner = serializers.CharField(source="batch.owner.username")


def batch_output(view: BatchView) -> dict:
    return BatchOutputSerializer(view).data
