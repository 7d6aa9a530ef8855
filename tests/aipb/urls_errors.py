"""The project's URLs plus views that fail, for tests/aipb/test_request_ids.py."""

from django.http import HttpResponseServerError
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.views import APIView

from aipb.urls import urlpatterns as project_urlpatterns


class BrokenApi(APIView):
    permission_classes = [AllowAny]

    def get(self, request):
        raise RuntimeError("the bug in question")


def broken_page(request):
    raise RuntimeError("the bug in question")


def broken_plain_api(request):
    raise KeyError("not a DRF view")


def html_500(request):
    # what Django's handler renders when a middleware below RequestIdMiddleware raises
    return HttpResponseServerError("<h1>Server Error (500)</h1>")


urlpatterns = [
    path("api/html-500", html_500),
    path("api/broken", BrokenApi.as_view()),
    path("api/broken-plain", broken_plain_api),
    path("broken-page", broken_page),
    *project_urlpatterns,
]
