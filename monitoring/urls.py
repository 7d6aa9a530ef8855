from django.urls import path

from monitoring import apis, views

urlpatterns = [
    path("metrics", views.metrics_view, name="metrics"),
    path("api/ai/stats/timeseries", apis.StatsTimeseriesApi.as_view(), name="stats-timeseries"),
]
