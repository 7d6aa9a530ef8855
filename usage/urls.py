from django.urls import path

from usage import apis

urlpatterns = [
    path("usage/report", apis.UsageReportApi.as_view(), name="usage-report"),
    path("usage/current-month", apis.UsageCurrentMonthApi.as_view(), name="usage-current-month"),
    path("usage/last-n-days", apis.UsageLastNDaysApi.as_view(), name="usage-last-n-days"),
    path("usage/budget", apis.BudgetApi.as_view(), name="usage-budget"),
    path("usage/prices", apis.PriceListApi.as_view(), name="usage-prices"),
]
