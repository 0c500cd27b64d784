"""Which URLs a worker may fetch: refuses targets inside the machine's or the cloud's own network.

A URL task names a server chosen by whoever submitted it, so without a check it could make the
worker fetch ``http://127.0.0.1:6379/``, a router's admin page or a cloud metadata service (SSRF).
The rules, applied to the first URL and to every redirect hop:

- only ``http`` and ``https``; no user name or password in the URL;
- the host must not be, or resolve to, a loopback, private, link-local, multicast, reserved,
  unspecified, shared (CGNAT, 100.64/10) or metadata address, in any spelling: integer or hex or
  octal or short IPv4 forms (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``), IPv4 embedded
  in IPv6 (``::ffff:127.0.0.1``, 6to4, NAT64), ``localhost`` and ``*.localhost``. Every address
  a name resolves to is checked;
- the only exemption is the hub's exact origin (scheme, host and port), plus ``trusted_origins``,
  which production leaves empty and tests use for their loopback servers.

Checking before connecting is not enough against DNS rebinding (the name may resolve elsewhere a
moment later), so :class:`PeerCheckingAdapter` checks the address the socket actually connected to,
before a byte of the request is sent. Proxies are not supported: they would hide the peer.

Pure functions plus one requests adapter; safe to use from any thread.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool
from urllib3.poolmanager import PoolManager
from urllib3.util import parse_url

from morag_worker.core.transfer.errors import UnsafeURL

__all__ = [
    "Origin",
    "PeerCheckingAdapter",
    "Resolver",
    "UnsafeURL",
    "UrlPolicy",
    "check_url",
    "normalise_url",
    "origin_of",
    "refusal_reason",
    "system_resolver",
]

Resolver = Callable[[str, int], Sequence[str]]
"""``(host, port) -> IP address strings``; raises OSError when the name does not resolve."""

PeerCheck = Callable[[str, str, int, str], None]
"""``(scheme, host, port, peer_ip) -> None``; raises UnsafeURL to refuse a connection."""

_DEFAULT_PORTS = {"http": 80, "https": 443}
_MALFORMED = re.compile(r"[\s\x00-\x1f\x7f]")
_IPV4_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_METADATA = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack...
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
    }
)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, through the operating system's ``getaddrinfo``."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class Origin(NamedTuple):
    """Scheme, lower-case host (no brackets) and port with the scheme's default filled in."""

    scheme: str
    host: str
    port: int

    @property
    def display(self) -> str:
        """``host`` or ``host:port`` (brackets around IPv6), for messages and logs."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


def normalise_url(url: str) -> str:
    """``url`` as requests will send it (IDNA host, quoted path), or UnsafeURL if it cannot be parsed."""
    if not isinstance(url, str):
        raise UnsafeURL("Refusing a malformed URL (it contains spaces or control characters).")
    return _normalised(url)


# A download parses its URL four times (the origin for logs, is it the hub's, the policy check, the
# request): remembering the last few answers saves 0.2 ms a task (issue 14). Both are pure
# functions of the string; a refusal raises and so is never remembered.
@functools.lru_cache(maxsize=64)
def _normalised(url: str) -> str:
    if _MALFORMED.search(url):  # \s is str.isspace, Unicode spaces included
        raise UnsafeURL("Refusing a malformed URL (it contains spaces or control characters).")
    prepared = requests.PreparedRequest()
    try:
        prepared.prepare_url(url, None)
    except (requests.exceptions.RequestException, ValueError, UnicodeError):
        raise UnsafeURL("Refusing a URL that cannot be parsed.") from None
    assert prepared.url is not None
    return prepared.url


def origin_of(url: str) -> Origin:
    """The origin of an http(s) URL; UnsafeURL for any other scheme or a URL without a host."""
    return _parse(url)[0]


@functools.lru_cache(maxsize=64)
def _parse(url: str) -> tuple[Origin, bool]:
    """``(origin, has_userinfo)`` of ``url`` as requests will connect to it."""
    parsed = parse_url(normalise_url(url))
    scheme = (parsed.scheme or "").lower()
    if scheme not in _DEFAULT_PORTS:
        shown = scheme[:20] or "none"
        raise UnsafeURL(f"Refusing a URL with scheme '{shown}': only http and https are allowed.")
    if not parsed.host:
        raise UnsafeURL("Refusing a URL without a host.")
    userinfo = parsed.auth is not None or "@" in urlsplit(url).netloc
    return Origin(scheme, _bare_host(parsed.host), parsed.port or _DEFAULT_PORTS[scheme]), userinfo


def _bare_host(host: str) -> str:
    host = host.lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def _parse_ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    """Read ``host`` the way ``inet_aton`` (and so ``getaddrinfo``) does: 1-4 parts, each decimal,
    ``0x`` hex or ``0`` octal, the last part filling the remaining bytes. None if it is not one."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_IPV4_PART.fullmatch(part) for part in parts):
        return None
    values = [
        int(part[2:] or "0", 16) if part[:2].lower() == "0x" else int(part, 8 if part[0] == "0" else 10)
        for part in parts
    ]
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for index, value in enumerate(head):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def _looks_numeric(host: str) -> bool:
    last = host.rsplit(".", 1)[-1]
    return last.isdigit() or (
        last[:2].lower() == "0x" and all(c in "0123456789abcdefABCDEF" for c in last[2:])
    )


def refusal_reason(address: IPAddress) -> str | None:
    """Why ``address`` must not be fetched from ("a loopback address"...), or None if it may."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            address = ipaddress.IPv6Address(address.compressed.split("%", 1)[0])
        if address in _METADATA:
            return "a cloud metadata address"
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            reason = refusal_reason(embedded)
            return f"{reason} (inside an IPv6 address)" if reason else None
    if address in _METADATA:
        return "a cloud metadata address"
    checks = (
        (address.is_loopback, "a loopback address"),
        (address.is_unspecified, "an unspecified address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT, "a shared (CGNAT) address"),
        (address.is_reserved, "a reserved address"),
        (address.is_private, "a private address"),
        (not address.is_global, "not a public address"),
    )
    return next((reason for refused, reason in checks if refused), None)


@dataclass(frozen=True)
class UrlPolicy:
    """The fetch policy: the hub's origin, how names resolve, and (tests only) trusted origins.

    Attributes:
        hub_origin: The hub's URL (only its origin counts); exempt from the address rules.
        resolver: Resolves a host name to every address it has.
        trusted_origins: More origins exempt from the address rules, like the hub but never
            given the API key. Empty in production; tests put their loopback servers here.
    """

    hub_origin: str | None = None
    resolver: Resolver = system_resolver
    trusted_origins: frozenset[str] = frozenset()
    _exempt: frozenset[Origin] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        origins = {origin_of(o) for o in self.trusted_origins}
        if self.hub_origin is not None:
            origins.add(origin_of(self.hub_origin))
        object.__setattr__(self, "_exempt", frozenset(origins))

    def is_hub(self, url: str) -> bool:
        """True when ``url`` has exactly the hub's origin (scheme, host and port)."""
        return self.hub_origin is not None and origin_of(url) == origin_of(self.hub_origin)

    def check(self, url: str) -> None:
        """Raise UnsafeURL unless ``url`` may be fetched. Resolves host names (OSError if that fails)."""
        origin, userinfo = _parse(url)
        if userinfo:
            raise UnsafeURL("Refusing a URL with a user name or password in it.")
        if origin in self._exempt:
            return
        host = origin.host
        if host == "localhost" or host.endswith(".localhost"):
            raise UnsafeURL(f"Refusing to download from {origin.host}: it names this machine (localhost).")
        literal = _ip_literal(host)
        addresses = [literal] if literal is not None else self._resolve(origin, host)
        for address in addresses:
            reason = refusal_reason(address)
            if reason:
                if literal is None:
                    via = f" (it resolves to {address})"
                else:
                    via = "" if str(address) == host else f" ({address})"
                raise UnsafeURL(f"Refusing to download from {origin.host}{via}: it is {reason}.")

    def check_peer(self, scheme: str, host: str, port: int, peer_ip: str) -> None:
        """Raise UnsafeURL when a connection to ``host`` actually reached a refused address."""
        if Origin(scheme, _bare_host(host), port) in self._exempt:
            return
        reason = refusal_reason(ipaddress.ip_address(peer_ip))
        if reason:
            raise UnsafeURL(f"Refusing to download from {host}: the connection reached {peer_ip}, {reason}.")

    def _resolve(self, origin: Origin, host: str) -> list[IPAddress]:
        answers = self.resolver(host, origin.port)
        if not answers:
            raise UnsafeURL(f"Refusing to download from {origin.host}: the name resolves to no address.")
        return [ipaddress.ip_address(answer) for answer in answers]


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if ":" in host:
        raise UnsafeURL(f"Refusing to download from {host[:80]}: it is not a valid IPv6 address.")
    if _looks_numeric(host):
        address = _parse_ipv4_loose(host)
        if address is None:
            raise UnsafeURL(f"Refusing to download from {host[:80]}: it is not a valid IPv4 address.")
        return address
    return None


def check_url(url: str, *, hub_origin: str | None, resolver: Resolver = system_resolver) -> None:
    """Raise UnsafeURL unless production policy allows fetching ``url`` (see the module docstring)."""
    UrlPolicy(hub_origin=hub_origin, resolver=resolver).check(url)


class _CheckedHTTPConnection(HTTPConnection):
    def __init__(self, *args: Any, peer_check: PeerCheck, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._peer_check = peer_check

    def _new_conn(self) -> socket.socket:
        return _checked(super()._new_conn(), self._peer_check, "http", self.host, self.port)


class _CheckedHTTPSConnection(HTTPSConnection):
    def __init__(self, *args: Any, peer_check: PeerCheck, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._peer_check = peer_check

    def _new_conn(self) -> socket.socket:
        # Runs before the TLS handshake, so nothing is sent to a refused peer.
        return _checked(super()._new_conn(), self._peer_check, "https", self.host, self.port)


def _checked(sock: socket.socket, check: PeerCheck, scheme: str, host: str, port: int) -> socket.socket:
    try:
        check(scheme, host, port, str(sock.getpeername()[0]))
    except BaseException:
        sock.close()
        raise
    return sock


class _PeerCheckingPoolManager(PoolManager):
    def __init__(self, *args: Any, peer_check: PeerCheck, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._peer_check = peer_check

    def _new_pool(
        self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None
    ) -> HTTPConnectionPool:
        pool = super()._new_pool(scheme, host, port, request_context)
        pool.ConnectionCls = _CheckedHTTPSConnection if scheme == "https" else _CheckedHTTPConnection
        pool.conn_kw = {**pool.conn_kw, "peer_check": self._peer_check}
        return pool


class PeerCheckingAdapter(HTTPAdapter):
    """A requests adapter that vets the peer address of every new connection before using it.

    Best effort against DNS rebinding: the address checked is the one the socket is connected to,
    whatever a later DNS answer says. No retries of its own (the downloader does those).
    """

    def __init__(self, policy: UrlPolicy) -> None:
        self._policy = policy
        super().__init__(max_retries=0)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        self._pool_connections = connections
        self._pool_maxsize = maxsize
        self._pool_block = block
        self.poolmanager = _PeerCheckingPoolManager(
            num_pools=connections,
            maxsize=maxsize,
            block=block,
            peer_check=self._policy.check_peer,
            **pool_kwargs,
        )
