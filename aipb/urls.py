from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from aipb import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("django-rq/", include("django_rq.urls")),
    path("api/auth/token", views.AuthTokenApi.as_view(), name="api-token"),
    path("api/version", views.VersionApi.as_view(), name="api-version"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/ai/", include("jobs.urls")),
    path("api/ai/", include("dlq.urls")),
    path("api/ai/", include("usage.urls")),
    path("", include("monitoring.urls")),
    re_path(r"^api/", views.api_not_found),
]

handler404 = "aipb.views.not_found"
