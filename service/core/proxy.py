"""Behind a reverse proxy: who the client is, and whether it came over HTTPS.

A proxy that terminates TLS talks plain HTTP to the service and says what it saw in
``X-Forwarded-Proto`` (the scheme), ``X-Forwarded-For`` (the chain of client addresses) and
``X-Forwarded-Host`` (the host the browser asked for). Anyone can send those headers, so they are
believed only from the peers listed in ``RAMP_TRUSTED_PROXIES`` (addresses or CIDR networks;
default none). From such a peer the request is rewritten before anything reads it: the scheme
(the login cookie is then ``Secure``), the client address (the login form's rate limit is per
address), the Host (the login form's same-origin check). The client is the right-most address of
``X-Forwarded-For`` that is not itself a trusted proxy: the ones left of it were written by the
client and prove nothing.

``rampctl serve`` turns uvicorn's own proxy-header handling off, so this setting is the only one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(items: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip())


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class TrustedProxyHeaders:
    """Pure ASGI; a no-op for requests whose peer is not a trusted proxy."""

    def __init__(self, app: ASGIApp, trusted: Iterable[str]) -> None:
        self.app = app
        self.trusted = networks(trusted)

    def is_trusted(self, host: str | None) -> bool:
        address = _address(host) if host else None
        return address is not None and any(address in net for net in self.trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.trusted:
            client = scope.get("client")
            if self.is_trusted(client[0] if client else None):
                scope = self._rewritten(scope)
        await self.app(scope, receive, send)

    def _rewritten(self, scope: Scope) -> Scope:
        headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or [])
        found: dict[bytes, list[str]] = {}
        for name, value in headers:
            if name in (b"x-forwarded-proto", b"x-forwarded-for", b"x-forwarded-host"):
                found.setdefault(name, []).append(value.decode("latin-1"))
        scope = dict(scope)
        proto = (found.get(b"x-forwarded-proto") or [""])[-1].split(",")[-1].strip().lower()
        if proto in ("http", "https"):
            scope["scheme"] = proto if scope["type"] == "http" else proto.replace("http", "ws")
        chain = [part for value in found.get(b"x-forwarded-for", []) for part in value.split(",")]
        client = self._client(chain)
        if client is not None:
            scope["client"] = (client, 0)
        # The nearest proxy's value (the last one): a browser cannot set this header on a cross-site form.
        host = (found.get(b"x-forwarded-host") or [""])[-1].split(",")[-1].strip()
        if host and all(c.isalnum() or c in ".-:[]" for c in host):
            kept = [(n, v) for n, v in headers if n != b"host"]
            scope["headers"] = [*kept, (b"host", host.encode("latin-1"))]
        return scope

    def _client(self, chain: list[str]) -> Any:
        for part in reversed(chain):
            address = _address(part)
            if address is None:
                return None  # garbage in the chain: keep the peer's address rather than guess
            if not any(address in net for net in self.trusted):
                return str(address)
        return str(_address(chain[0])) if chain and _address(chain[0]) else None
