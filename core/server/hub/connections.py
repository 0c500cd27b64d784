"""The hub's connection layer: what a client address may cost before a request is even parsed.

A flood of connections from one address would otherwise queue in front of every other client on the
hub's single event loop, however cheaply each request is refused once parsed. ``AddressGate`` counts
the connections each address holds and remembers the addresses the failed-authentication limit has
refused; ``HubH11Protocol`` consults it the moment a connection is accepted, and answers a refused or
over-connected address with a canned 429 or 503 and a close, without creating a request. A trusted
reverse proxy (uvicorn's ``FORWARDED_ALLOW_IPS``) carries many clients and is never gated here; the
failed-authentication limit still applies to its clients, by their forwarded address, per request.
The protocol also adds the header-read deadline that uvicorn's h11 protocol lacks.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["AddressGate", "HubH11Protocol", "hub_protocol", "is_trusted_proxy"]

_IDLE = h11.IDLE


def _canned(status: int, reason: str, why: str, retry_after_s: int) -> bytes:
    body = json.dumps({"error": why}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nretry-after: {retry_after_s}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


@functools.lru_cache(maxsize=8)
def _proxy_test(allowed: str) -> Callable[[str], bool]:
    """Whether a peer is one of uvicorn's trusted proxies (``FORWARDED_ALLOW_IPS``, comma-separated)."""
    if allowed.strip() == "*":
        return lambda _address: True
    networks = []
    for item in allowed.split(","):
        with_prefix = item.strip()
        if with_prefix:
            try:
                networks.append(ipaddress.ip_network(with_prefix, strict=False))
            except ValueError:
                continue  # a socket path or a name: never a TCP peer's address

    def trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in networks)

    return trusted


def is_trusted_proxy(address: str, forwarded_allow_ips: list[str] | str | None) -> bool:
    """A reverse proxy's connections carry many clients: the gate does not count or refuse them."""
    if not forwarded_allow_ips:
        return False
    allowed = forwarded_allow_ips if isinstance(forwarded_allow_ips, str) else ",".join(forwarded_allow_ips)
    return _proxy_test(allowed)(address)


@dataclass
class AddressGate:
    """Per hub process: connections open per client address, and addresses refused until a time.

    ``max_per_address`` 0 turns the connection cap off. Refusals come from the failed-authentication
    limit (kept in Redis across hub processes); this process remembers them so that a refused
    address's further connections cost an accept and a close, not a parsed request.
    """

    max_per_address: int = 256
    retry_after_s: int = 2
    _open: dict[str, int] = field(default_factory=dict)
    _refused: dict[str, float] = field(default_factory=dict)

    def refuse(self, address: str, seconds: float) -> None:
        """Refuse new connections from ``address`` for ``seconds``."""
        if len(self._refused) > 100_000:
            self._refused.clear()
        self._refused[address] = time.monotonic() + seconds

    def refused_for(self, address: str) -> int | None:
        """Seconds ``address`` stays refused, or None."""
        until = self._refused.get(address)
        if until is None:
            return None
        left = until - time.monotonic()
        if left <= 0:
            del self._refused[address]
            return None
        return max(1, math.ceil(left))

    def admit(self, address: str) -> bytes | None:
        """Count a new connection from ``address``; the canned refusal to send instead, if any."""
        refused = self.refused_for(address)
        if refused is not None:
            why = "too many failed authentications from this address; retry later"
            return _canned(429, "Too Many Requests", why, refused)
        held = self._open.get(address, 0)
        if self.max_per_address and held >= self.max_per_address:
            why = "too many connections from this address; retry shortly"
            return _canned(503, "Service Unavailable", why, self.retry_after_s)
        self._open[address] = held + 1
        return None

    def release(self, address: str) -> None:
        """A connection that ``admit`` counted has closed."""
        held = self._open.get(address, 0) - 1
        if held > 0:
            self._open[address] = held
        else:
            self._open.pop(address, None)

    def open_connections(self, address: str) -> int:
        return self._open.get(address, 0)


class HubH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the ``AddressGate`` at accept time and a header-read deadline.

    uvicorn arms its keep-alive timer only after a response; a connection that never finishes its
    headers (or never sends any) stays open for ever. Here each request's headers must be complete
    within ``header_timeout_s`` of the connection opening or of its first byte after the previous
    response, or the connection is closed.
    """

    header_timeout_s: float = 10.0
    gate: AddressGate | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._admitted: str | None = None

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is _IDLE and not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        gate = self.gate
        address = self.client[0] if self.client else None
        if gate is not None and address and not is_trusted_proxy(address, self.config.forwarded_allow_ips):
            refusal = gate.admit(address)
            if refusal is not None:
                transport.write(refusal)
                transport.close()
                return
            self._admitted = address
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self.conn.their_state is _IDLE:
            self._arm()
        super().data_received(data)
        if self.conn.their_state is not _IDLE:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Answered before the client finished its body (a 404, 405...): uvicorn would go on taking
        # and dropping that body for as long as it trickles in. Close instead.
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._admitted is not None and self.gate is not None:
            self.gate.release(self._admitted)
            self._admitted = None
        super().connection_lost(exc)


def hub_protocol(header_timeout_s: float, gate: AddressGate | None) -> type[HubH11Protocol]:
    """A ``HubH11Protocol`` bound to ``header_timeout_s`` and ``gate``, for ``uvicorn.run(http=...)``."""
    return type(
        "BoundHubH11Protocol", (HubH11Protocol,), {"header_timeout_s": header_timeout_s, "gate": gate}
    )
