from django.apps import AppConfig


class UsageConfig(AppConfig):
    name = "usage"
    verbose_name = "Token usage and cost"
    default_auto_field = "django.db.models.BigAutoField"
