from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0007_aijob_traceparent"),
    ]

    operations = [
        migrations.AddField(
            model_name="batch",
            name="webhook",
            field=models.JSONField(blank=True, null=True),
        ),
    ]
