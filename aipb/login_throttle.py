"""Login throttling around django-axes: the client address it counts by, and how long a lockout has left.

django-axes (settings: AXES_*) counts failed logins per username and client address in Postgres, shared by
every web process, and refuses a locked pair before any password is checked, on `/admin/login/` and on
`POST /api/auth/token` alike. This module gives it the client address (behind AIPB_TRUSTED_PROXY_COUNT
proxies) and gives the token endpoint its Retry-After.
"""

from __future__ import annotations

import ipaddress
import math
from datetime import timedelta

from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_cool_off
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import Max
from django.utils import timezone


def _valid(address: str) -> str | None:
    try:
        return str(ipaddress.ip_address(address.strip()))
    except ValueError:
        return None


def client_ip(request) -> str | None:
    """AXES_CLIENT_IP_CALLABLE: the address the request came from, as DRF's throttles see it (NUM_PROXIES).

    Each trusted proxy appends the address it received the request from to X-Forwarded-For, so with N proxies
    the client is the N-th entry from the right; anything left of it is what the client wrote itself and is
    never believed. With no proxy trusted (the default) the header is ignored: a client could write any
    address there and get a fresh failure count for each.
    """
    remote = request.META.get("REMOTE_ADDR", "")
    proxies = settings.AIPB_TRUSTED_PROXY_COUNT
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies and forwarded:
        hops = [hop for hop in forwarded.split(",") if hop.strip()]
        if hops:
            # fewer hops than proxies: the request skipped part of the chain; its leftmost entry is the
            # best there is (DRF's NUM_PROXIES rule), and a proxy wrote it, not the client
            found = _valid(hops[-min(proxies, len(hops))])
            if found:
                return found
    # Django's test client and a Unix-socket gunicorn may send no address; axes keeps NULL for it
    return _valid(remote)


def seconds_left(request, *, username: str) -> int:
    """How long the lockout of this username from this request's address lasts yet (at least 1 second)."""
    cool_off: timedelta = get_cool_off(request)
    AxesProxyHandler.update_request(request)
    latest = AccessAttempt.objects.filter(username=username, ip_address=request.axes_ip_address).aggregate(
        at=Max("attempt_time")
    )["at"]
    if latest is None:  # reset meanwhile by an operator
        return 1
    return max(1, math.ceil((latest + cool_off - timezone.now()).total_seconds()))


def login_succeeded(request, *, username: str) -> int:
    """A successful token login clears the pair's failures, as AXES_RESET_ON_SUCCESS does for the admin's
    login (which axes sees through Django's user_logged_in signal; the token view logs nobody in)."""
    AxesProxyHandler.update_request(request)
    # the pair exactly: axes.utils.reset(ip=None) would clear the username's failures from every address
    deleted, _ = AccessAttempt.objects.filter(username=username, ip_address=request.axes_ip_address).delete()
    return deleted
