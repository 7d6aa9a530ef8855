"""Output shapes for schedules, shared by the API and the `schedules` command's --json."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from jobs.serializers import OptionsField
from schedules.models import Schedule, ScheduleFiring
from schedules.selectors import schedule_recent_firings


class FiringOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = ScheduleFiring
        fields = ("id", "scheduled_for", "fired_at", "trigger", "outcome", "job_id", "batch_id", "error")


class ScheduleOutputSerializer(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username", read_only=True)
    kind = serializers.CharField(
        read_only=True,
        help_text="job: each firing submits one job (prompt ... "
        "routing_policy); batch: each firing submits the batch template `batch`",
    )
    options = OptionsField(read_only=True)
    webhook = serializers.JSONField(read_only=True, allow_null=True, help_text="a job template's webhook")
    fallbacks = serializers.JSONField(read_only=True, allow_null=True, help_text="a job template's fallbacks")
    batch = serializers.JSONField(
        read_only=True,
        allow_null=True,
        help_text='a batch template: {"jobs": [...], "webhook": ..., "metadata": {...}}, as POST /api/ai/batches '
        "takes it; null for a job template",
    )

    class Meta:
        model = Schedule
        fields = (
            "id",
            "name",
            "owner",
            "cron",
            "timezone",
            "paused",
            "next_fire_at",
            "last_fired_at",
            "kind",
            "prompt",
            "provider",
            "model",
            "priority",
            "options",
            "max_attempts",
            "webhook",
            "fallbacks",
            "routing_policy",
            "batch",
            "created_at",
            "updated_at",
        )


class ScheduleDetailSerializer(ScheduleOutputSerializer):
    recent_firings = serializers.SerializerMethodField()

    class Meta(ScheduleOutputSerializer.Meta):
        fields = (*ScheduleOutputSerializer.Meta.fields, "recent_firings")

    @extend_schema_field(FiringOutputSerializer(many=True))
    def get_recent_firings(self, schedule: Schedule) -> list[dict]:
        return FiringOutputSerializer(schedule_recent_firings(schedule=schedule), many=True).data
