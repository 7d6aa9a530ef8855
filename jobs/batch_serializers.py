"""A batch's shapes: its input (POST /api/ai/batches, and a schedule's batch template), and its output, shared by
the API and the `batches` command's --json."""

from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from aipb.api import StrictSerializer
from jobs.batch_selectors import BatchView


class BatchInputSerializer(StrictSerializer):
    """What POST /api/ai/batches takes (each of its jobs then checked by the job API's own serializer); a
    schedule's batch template is the same body."""

    jobs = serializers.ListField(
        allow_empty=False,
        min_length=1,  # allow_empty says it to the client, min_length to the schema (minItems)
        max_length=settings.AI_BATCH_MAX_JOBS,
        help_text="the jobs, each what POST /api/ai/jobs takes",
    )
    metadata = serializers.DictField(required=False, default=dict, help_text="kept with the batch, shown back")
    # {"url", "events"}: checked by the service (webhooks.records.webhook_spec_clean), one place for the rules
    webhook = serializers.JSONField(
        required=False,
        help_text='{"url": ..., "events": [...]} of job.succeeded, job.dead, batch.completed (default all '
        "three): batch.completed once when the batch finishes; the job events for each job without a webhook "
        "of its own",
    )


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
