from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("schedules", "0001_schedules_and_firings"),
    ]

    operations = [
        migrations.AddField(
            model_name="schedule",
            name="kind",
            field=models.CharField(choices=[("job", "Job"), ("batch", "Batch")], default="job", max_length=5),
        ),
        migrations.AlterField(
            model_name="schedule",
            name="prompt",
            field=models.TextField(blank=True),
        ),
        migrations.AlterField(
            model_name="schedule",
            name="provider",
            field=models.CharField(blank=True, max_length=20),
        ),
        migrations.AlterField(
            model_name="schedule",
            name="model",
            field=models.CharField(blank=True, max_length=200),
        ),
        migrations.AddField(
            model_name="schedule",
            name="webhook",
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="schedule",
            name="fallbacks",
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="schedule",
            name="routing_policy",
            field=models.CharField(blank=True, default="", max_length=20),
        ),
        migrations.AddField(
            model_name="schedule",
            name="batch",
            field=models.JSONField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="schedulefiring",
            name="batch_id",
            field=models.UUIDField(blank=True, null=True),
        ),
    ]
