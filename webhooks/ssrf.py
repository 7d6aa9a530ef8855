"""Where a webhook may be sent (SSRF safety): https to public addresses, unless the host is allowed.

Two checks, because a name's answer can change between them (DNS rebinding):
- at submit, ``url_check``: the URL's form (https, a host, no credentials) and, when the host is an address
  literal, that it is public. Names are not resolved here: a submission must not wait on DNS.
- at delivery, ``address_resolve``: the name is resolved and every answer must be public; the sender then
  connects to the address checked here, never resolving the name again.

Hosts in AI_WEBHOOK_ALLOWED_HOSTS (exact names or address literals; 127.0.0.1 for tests and local development)
skip the address checks and may use plain http.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from urllib.parse import urlsplit

from django.conf import settings

from aipb.exceptions import InvalidInput

URL_MAX_CHARS = 2048
# What inet_aton also reads as an IPv4 address ("127.1", "0x7f.0.0.1", "2130706433"); urlsplit leaves them as names.
_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.IGNORECASE)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(Exception):
    """A destination that must not be called (said at delivery: the row fails with this message, no retry)."""


class Unresolvable(Exception):
    """The name did not resolve now (DNS down, NXDOMAIN): a try that failed, retried like any other."""


def _allowed(host: str) -> bool:
    return host.lower() in settings.AI_WEBHOOK_ALLOWED_HOSTS


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    return address.is_global and not address.is_multicast


def url_check(url: object) -> str:
    """The URL as given, or InvalidInput saying why it may not be a webhook's."""
    if not isinstance(url, str) or not url:
        raise InvalidInput("webhook.url must be a non-empty string")
    if len(url) > URL_MAX_CHARS:
        raise InvalidInput(f"webhook.url must be at most {URL_MAX_CHARS} characters")
    if any(ord(char) <= 32 or ord(char) == 127 for char in url):
        raise InvalidInput("webhook.url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"webhook.url is not a valid URL: {exc}") from None
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidInput("webhook.url must be an https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("webhook.url must not carry credentials")
    if port == 0:
        raise InvalidInput("webhook.url has an invalid port")
    if _allowed(host):
        return url
    if parts.scheme != "https":
        raise InvalidInput("webhook.url must use https (plain http only for hosts in AI_WEBHOOK_ALLOWED_HOSTS)")
    address = _literal(host)
    if address is not None and not is_public(address):
        raise InvalidInput(f"webhook.url must point at a public address; {host} is not")
    return url


def address_resolve(host: str, port: int) -> str:
    """The address to connect to for host: resolved now, every answer public (unless the host is allowed)."""
    host = host.rstrip(".")
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise Unresolvable(f"cannot resolve {host}: {exc}") from None
    addresses = [ipaddress.ip_address(answer[4][0].split("%", 1)[0]) for answer in answers]
    if not addresses:
        raise Unresolvable(f"{host} has no address")
    if not _allowed(host):
        private = [str(address) for address in addresses if not is_public(address)]
        if private:
            raise Refused(f"{host} resolves to a non-public address ({', '.join(private)}); refused")
    return str(addresses[0])
