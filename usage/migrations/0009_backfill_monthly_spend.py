"""Month-to-date spend from the usage already recorded: every month's total per owner, and per group of the
owners' groups now (group memberships at the time of past calls are not kept). Budgets are checked against
these rows from now on; usage.recording keeps them in step with every row it inserts."""

from django.db import migrations

BACKFILL = """
    INSERT INTO usage_monthlyspend (user_id, group_id, month, spent_usd)
    SELECT owner_id, NULL, date_trunc('month', created_at AT TIME ZONE 'UTC')::date, SUM(cost)
    FROM usage_tokenusage WHERE cost > 0 GROUP BY 1, 3
    UNION ALL
    SELECT NULL, member.group_id, date_trunc('month', usage.created_at AT TIME ZONE 'UTC')::date, SUM(usage.cost)
    FROM usage_tokenusage usage JOIN auth_user_groups member ON member.user_id = usage.owner_id
    WHERE usage.cost > 0 GROUP BY 2, 3
"""


class Migration(migrations.Migration):
    dependencies = [("usage", "0008_budgets_and_monthly_spend")]

    operations = [migrations.RunSQL(BACKFILL, reverse_sql="DELETE FROM usage_monthlyspend")]
