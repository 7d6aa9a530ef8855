from django.urls import path

from jobs import apis, batch_apis, queue_apis

urlpatterns = [
    path("jobs", apis.JobListCreateApi.as_view(), name="job-list"),
    path("jobs/<uuid:job_id>", apis.JobDetailApi.as_view(), name="job-detail"),
    path("jobs/<uuid:job_id>/retry", apis.JobRetryApi.as_view(), name="job-retry"),
    path("jobs/<uuid:job_id>/cancel", apis.JobCancelApi.as_view(), name="job-cancel"),
    path("providers", apis.ProviderListApi.as_view(), name="provider-list"),
    path("jobs/metrics", apis.JobMetricsApi.as_view(), name="job-metrics"),
    path("batches", batch_apis.BatchListCreateApi.as_view(), name="batch-list"),
    path("batches/<uuid:batch_id>", batch_apis.BatchDetailApi.as_view(), name="batch-detail"),
    path("batches/<uuid:batch_id>/jobs", batch_apis.BatchJobListApi.as_view(), name="batch-jobs"),
    path("batches/<uuid:batch_id>/cancel", batch_apis.BatchCancelApi.as_view(), name="batch-cancel"),
    path("queue", queue_apis.QueueStatusApi.as_view(), name="queue-status"),
    path("queue/pause", queue_apis.QueuePauseApi.as_view(), name="queue-pause"),
    path("queue/resume", queue_apis.QueueResumeApi.as_view(), name="queue-resume"),
    path("queue/intake", queue_apis.QueueIntakeApi.as_view(), name="queue-intake"),
]
