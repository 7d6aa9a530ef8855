"""Batch endpoints: parse, call one service or selector, serialize.

Each job of a batch is validated by the single-job endpoint's own input serializer
(JobListCreateApi.InputSerializer) and then by the same service validation (jobs.submission.job_build), so a
batch accepts exactly what one POST /api/ai/jobs accepts, item by item.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from aipb.api import ListParams, Pagination, error_responses, paginated, parse_body, parse_query
from audit.records import Actor
from jobs import batch_selectors, batches, fairness
from jobs.apis import JOB_EXAMPLE, idempotency_key_of, job_items_parsed
from jobs.batch_serializers import BatchInputSerializer, BatchOutputSerializer, batch_output
from jobs.models import JobStatus
from jobs.serializers import JobSummarySerializer
from jobs.throttles import SubmitThrottle

BATCH_EXAMPLE = {
    "id": "0b7e2c4d-1a3f-4e5b-8c9d-6f1a2b3c4d5e",
    "status": "running",
    "total": 3,
    "counts": {"queued": 1, "running": 1, "retrying": 0, "succeeded": 1, "dead": 0, "canceled": 0},
    "cost_usd": "0.004210",
    "created_at": "2026-12-03T09:00:00.000000Z",
    "finished_at": None,
    "metadata": {"site": "cycling-club"},
    "owner": "alice",
}
JOB_SUMMARY_FIELDS = JobSummarySerializer.Meta.fields
SUBMIT_EXAMPLE = {
    "jobs": [
        {"prompt": "Home page of a cycling club"},
        {"prompt": "Membership page of a cycling club", "priority": "high"},
        {"prompt": "Contact page of a cycling club", "provider": "openai", "model": "gpt-5-mini"},
    ],
    "metadata": {"site": "cycling-club"},
}


class BatchListCreateApi(APIView):
    throttle_scope = "submit"

    def get_throttles(self):
        return []  # a POST is counted once its jobs are known: every job is one submission (post below)

    @extend_schema(
        operation_id="ai_batches_list",
        summary="List batches",
        description="Newest first, paginated with limit and offset. Owners see their own batches, staff see all.",
        parameters=[ListParams],
        responses={200: paginated(BatchOutputSerializer, "PaginatedBatchList"), **error_responses(400)},
        examples=[
            OpenApiExample(
                "one page",
                value={"count": 1, "next": None, "previous": None, "results": [BATCH_EXAMPLE]},
                response_only=True,
            )
        ],
    )
    def get(self, request):
        params = parse_query(ListParams, request)
        limit, offset = params["limit"], params["offset"]
        qs = batch_selectors.batch_list(user=request.user)
        count = qs.count()
        views = batch_selectors.batch_views(list(qs[offset : offset + limit])) if count > offset else []
        paginator = Pagination()
        paginator.request, paginator.limit, paginator.offset, paginator.count = request, limit, offset, count
        return paginator.get_paginated_response([batch_output(view) for view in views])

    @extend_schema(
        request=BatchInputSerializer,
        responses={
            201: BatchOutputSerializer,
            200: BatchOutputSerializer,
            **error_responses(400, 409, 413, 415, 429, 503),
        },
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False)],
        summary="Submit a batch of page-generation jobs",
        description=(
            "Up to AI_BATCH_MAX_JOBS jobs, each what POST /api/ai/jobs takes, written in one transaction and "
            "enqueued together: 201 with the batch. One bad job refuses the whole batch with a 400 naming its "
            "index (`jobs[7]: ...`), and nothing is written. Every job counts against the submission throttle "
            "(429 past it). With an Idempotency-Key, the same request again answers 200 with the batch it made "
            "(409 if the body differs). The batch is `completed` once every job is final. With a `webhook`, "
            "`batch.completed` is sent once when the batch finishes (a canceled batch's with status `canceled`), "
            "its data the batch as GET /api/ai/batches/{id} shows it; its job events go to the jobs that carry no "
            "webhook of their own. A bad webhook (not https, a private address, an unknown event) is a 400 naming "
            "`webhook`, nothing written."
        ),
        examples=[
            OpenApiExample("three pages", value=SUBMIT_EXAMPLE, request_only=True),
            OpenApiExample(
                "the batch made",
                value={
                    **BATCH_EXAMPLE,
                    "counts": {"queued": 3, "running": 0, "retrying": 0, "succeeded": 0, "dead": 0, "canceled": 0},
                    "cost_usd": "0.000000",
                },
                response_only=True,
                status_codes=["201"],
            ),
        ],
    )
    def post(self, request):
        fields = parse_body(BatchInputSerializer, request.data)
        key = idempotency_key_of(request)
        jobs = job_items_parsed(fields["jobs"], field="jobs")
        for job in jobs:  # before anything is written or counted
            fairness.priority_check(owner=request.user, priority=job.get("priority", ""))
        throttle = SubmitThrottle(hits=len(jobs))
        if not throttle.allow_request(request, self):
            self.throttled(request, throttle.wait())
        batch, created = batches.batch_submit(
            owner=request.user,
            jobs=jobs,
            metadata=fields["metadata"],
            webhook=fields.get("webhook"),
            idempotency_key=key,
        )
        if created:
            return Response(batch_output(batch_selectors.batch_view_submitted(batch)), status=status.HTTP_201_CREATED)
        view = batch_selectors.batch_view(user=request.user, batch_id=batch.id)  # a replay: as it is now
        return Response(batch_output(view), status=status.HTTP_200_OK)


class BatchDetailApi(APIView):
    @extend_schema(
        responses={200: BatchOutputSerializer, **error_responses(404)},
        summary="One batch with its jobs' counts and cost",
        description="Its jobs counted by status, the priced cost of their provider calls, and when the last one "
        "reached a final state (`finished_at`, `status` completed). Another user's batch is a 404.",
        examples=[OpenApiExample("a batch", value=BATCH_EXAMPLE, response_only=True)],
    )
    def get(self, request, batch_id):
        return Response(batch_output(batch_selectors.batch_view(user=request.user, batch_id=batch_id)))


class BatchJobListParams(ListParams):
    status = serializers.ChoiceField(choices=JobStatus.choices, required=False)


class BatchJobListApi(APIView):
    @extend_schema(
        operation_id="ai_batches_jobs_list",
        summary="A batch's jobs",
        description="Its jobs in the order they were given, as GET /api/ai/jobs shows jobs, paginated with limit "
        "and offset; filter by status.",
        parameters=[BatchJobListParams],
        responses={200: paginated(JobSummarySerializer, "PaginatedBatchJobList"), **error_responses(400, 404)},
        examples=[
            OpenApiExample(
                "one page",
                value={
                    "count": 1,
                    "next": None,
                    "previous": None,
                    "results": [{key: value for key, value in JOB_EXAMPLE.items() if key in JOB_SUMMARY_FIELDS}],
                },
                response_only=True,
            )
        ],
    )
    def get(self, request, batch_id):
        params = parse_query(BatchJobListParams, request)
        batch = batch_selectors.batch_get(user=request.user, batch_id=batch_id)
        qs = batch_selectors.batch_jobs(batch=batch)
        if params.get("status"):
            qs = qs.filter(status=params["status"])
        return Pagination().paginate(
            qs, request, limit=params["limit"], offset=params["offset"], serializer_class=JobSummarySerializer
        )


class BatchCancelApi(APIView):
    @extend_schema(
        request=None,
        responses={200: BatchOutputSerializer, **error_responses(404, 409)},
        summary="Cancel what has not started",
        description="Every queued or retrying job of the batch becomes canceled and the batch `canceled`; running "
        "jobs finish, and the batch's `finished_at` is set when the last one ends. 409 unless the batch is running.",
        examples=[OpenApiExample("canceled", value={**BATCH_EXAMPLE, "status": "canceled"}, response_only=True)],
    )
    def post(self, request, batch_id):
        batch, _ = batches.batch_cancel(
            batch_id=batch_id, owner=None if request.user.is_staff else request.user, actor=Actor.of_api(request)
        )
        return Response(batch_output(batch_selectors.batch_views([batch])[0]))  # the batch as batch_cancel left it
