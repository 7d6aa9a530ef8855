"""webhooks.ssrf: what a webhook URL may be at submit, and what its name may resolve to at delivery."""

from __future__ import annotations

import pytest

from aipb.exceptions import InvalidInput
from webhooks.ssrf import Refused, Unresolvable, address_resolve, url_check


@pytest.fixture(autouse=True)
def _allow_loopback_only(settings):
    settings.AI_WEBHOOK_ALLOWED_HOSTS = frozenset({"127.0.0.1"})


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/aipb",
        "https://hooks.example.com:8443/a?b=c",
        "https://93.184.216.34/hook",  # a public address literal
        "https://[2606:4700:4700::1111]/hook",
        "http://127.0.0.1:8080/hook",  # allowed host: plain http too
        "https://localhost/hook",  # a name: resolved (and refused) at delivery, not here
    ],
)
def test_accepted(url):
    assert url_check(url) == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://hooks.example.com/aipb", "https"),  # plain http to a host not allowed
        ("ftp://hooks.example.com/x", "https"),
        ("https:///nohost", "host"),
        ("hooks.example.com/aipb", "https"),
        ("https://user:pw@hooks.example.com/", "credentials"),
        ("https://10.0.0.5/hook", "public"),
        ("https://192.168.1.1/hook", "public"),
        ("https://172.16.0.1/hook", "public"),
        ("https://127.0.0.2/hook", "public"),  # loopback, but not the allowed 127.0.0.1
        ("https://169.254.169.254/latest/meta-data", "public"),  # cloud metadata: link-local
        ("https://[::1]/hook", "public"),
        ("https://[fe80::1]/hook", "public"),
        ("https://[fd00::1]/hook", "public"),
        ("https://[::ffff:127.0.0.1]/hook", "public"),  # IPv4-mapped loopback
        ("https://0.0.0.0/hook", "public"),
        ("https://100.64.0.1/hook", "public"),  # carrier-grade NAT
        ("https://2130706433/hook", "public"),  # 127.0.0.1 as one decimal number
        ("https://0x7f.1/hook", "public"),  # 127.0.0.1 in inet_aton's short hex form
        ("https://127.1/hook", "public"),
        ("https://hooks.example.com:99999/", "valid URL"),
        ("https://hooks.example.com:0/", "port"),
        ("https://hooks.example.com/a b", "spaces"),
        ("https://hooks.example.com/\x00", "control"),
        ("https://hooks.example.com/" + "a" * 2100, "at most"),
        ("", "non-empty"),
        (None, "non-empty"),
        (42, "non-empty"),
    ],
)
def test_refused(url, says):
    with pytest.raises(InvalidInput, match=says):
        url_check(url)


def test_a_name_that_resolves_to_loopback_is_refused_at_delivery():
    with pytest.raises(Refused, match="non-public"):
        address_resolve("localhost", 443)


def test_an_allowed_host_resolves_to_its_address():
    assert address_resolve("127.0.0.1", 80) == "127.0.0.1"


def test_a_name_that_does_not_resolve_is_a_retryable_failure():
    with pytest.raises(Unresolvable):
        address_resolve("no-such-host.invalid", 443)


def test_an_allowed_name_may_resolve_to_loopback(settings):
    settings.AI_WEBHOOK_ALLOWED_HOSTS = frozenset({"localhost"})
    assert address_resolve("localhost", 80) in ("127.0.0.1", "::1")
