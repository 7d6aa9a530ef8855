from django.apps import AppConfig


class AipbConfig(AppConfig):
    name = "aipb"
    verbose_name = "aipb"
