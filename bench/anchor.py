"""The trivial-view anchor for bench.api: what this stack (gunicorn config, Django, every middleware of
aipb.settings, the ORM, Postgres) serves when a view does nothing but write or read one row.

Served only by the benchmark: bench.settings points ROOT_URLCONF here, this URLconf puts the anchor in front of
aipb.urls (so it walks no pattern of ours; ours walk one of its), and production's URLconf never names it.
The row lives in ``bench_anchor_row``, a table the benchmark creates in its own database (``ensure_table``);
no migration knows it.
"""

from __future__ import annotations

import json
import os

from django.db import connection, models
from django.http import HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from aipb.urls import handler404
from aipb.urls import urlpatterns as app_urlpatterns

TABLE = "bench_anchor_row"


class AnchorRow(models.Model):
    note = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "bench"
        managed = False
        db_table = TABLE

    def __str__(self) -> str:
        return self.note


def ensure_table() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, note varchar(200) NOT NULL, "
            "created_at timestamptz NOT NULL)"
        )
        cursor.execute(f"TRUNCATE {TABLE} RESTART IDENTITY")


@csrf_exempt
def anchor_create(request):
    if request.method != "POST":
        return HttpResponse(status=405)
    row = AnchorRow.objects.create(note=str(json.loads(request.body).get("prompt", ""))[:200])
    return JsonResponse({"id": row.id, "note": row.note, "created_at": row.created_at}, status=201)


def anchor_detail(request, pk: int):
    row = AnchorRow.objects.get(pk=pk)
    # the worker's pid: bench.api waits until every gunicorn worker has answered before it measures
    return JsonResponse({"id": row.id, "note": row.note, "created_at": row.created_at, "pid": os.getpid()})


urlpatterns = [
    path("bench/anchor", anchor_create),
    path("bench/anchor/<int:pk>", anchor_detail),
    *app_urlpatterns,
]

__all__ = ["handler404", "urlpatterns"]
