from django.urls import path

from dlq import apis

urlpatterns = [
    path("dlq", apis.DeadLetterListApi.as_view(), name="dlq-list"),
    path("dlq/stats", apis.DeadLetterStatsApi.as_view(), name="dlq-stats"),
    path("dlq/retry", apis.DeadLetterBulkRetryApi.as_view(), name="dlq-retry-bulk"),
    path("dlq/<int:entry_id>/retry", apis.DeadLetterRetryApi.as_view(), name="dlq-retry"),
    path("dlq/<int:entry_id>/discard", apis.DeadLetterDiscardApi.as_view(), name="dlq-discard"),
]
