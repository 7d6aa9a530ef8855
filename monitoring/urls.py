from django.urls import path

from monitoring import views

urlpatterns = [path("metrics", views.metrics_view, name="metrics")]
