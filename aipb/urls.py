from csp.constants import SELF
from csp.decorators import csp_update
from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView

from aipb import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("django-rq/", include("django_rq.urls")),
    path("api/auth/token", views.AuthTokenApi.as_view(), name="api-token"),
    path("api/version", views.VersionApi.as_view(), name="api-version"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # the split view serves Swagger UI's start-up script from its own URL (`?script`), not inline, so the
    # Content-Security-Policy needs no 'unsafe-inline' for scripts
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="api-schema"), name="api-docs"),
    # ReDoc's search index runs in a Web Worker it builds from a blob: URL (the CSP's worker-src)
    path(
        "api/redoc/",
        csp_update({"worker-src": [SELF, "blob:"]})(
            SpectacularRedocView.as_view(url_name="api-schema", template_name="api/redoc.html")
        ),
        name="api-redoc",
    ),
    path("api/ai/", include("jobs.urls")),
    path("api/ai/", include("dlq.urls")),
    path("api/ai/", include("usage.urls")),
    path("api/ai/", include("schedules.urls")),
    path("api/ai/", include("webhooks.urls")),
    path("", include("monitoring.urls")),
    re_path(r"^api/", views.api_not_found),
]

handler404 = "aipb.views.not_found"
