from django.urls import path

from schedules import apis

urlpatterns = [
    path("schedules", apis.ScheduleListCreateApi.as_view(), name="schedules-list"),
    path("schedules/<uuid:schedule_id>", apis.ScheduleDetailApi.as_view(), name="schedules-detail"),
]
