import os

from django.core.asgi import get_asgi_application

from aipb import tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aipb.settings")
tracing.setup(role="web")  # before the handler loads the middleware: the Django instrumentation adds its own
application = get_asgi_application()
