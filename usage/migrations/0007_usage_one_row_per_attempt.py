"""One usage row per provider call: (job, attempt) is unique, so recording a call's usage again (the spool's
replay, a retried recording) adds nothing (usage.recording). Rows whose job was deleted keep no key."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("usage", "0006_seed_price_data")]

    operations = [
        migrations.AddConstraint(
            model_name="tokenusage",
            constraint=models.UniqueConstraint(
                condition=models.Q(job__isnull=False), fields=("job", "attempt"), name="usage_one_row_per_attempt"
            ),
        ),
    ]
