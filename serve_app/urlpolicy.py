"""The one policy for every outbound request the server makes on a caller's behalf: input URLs
(`inputs.fetch_url`) and `fal_webhook` deliveries.

A caller must not be able to make the server reach what only the server can reach (the Ray
dashboard on 127.0.0.1:8265, a metadata service on 169.254.169.254, a database on 10.x). So:

- the host is resolved here, and every address it resolves to must be public: loopback,
  private, link-local, multicast, reserved, unspecified and shared (CGNAT) addresses are refused,
  in every spelling (IPv4, IPv6, IPv4-mapped / NAT64 / 6to4 / Teredo IPv6, and the decimal, octal
  and hex forms `inet_aton` accepts, such as `2130706433` or `0x7f.1`);
- the connection goes to the address that was checked (`GuardedTransport`'s network backend
  resolves once and connects to that address), so DNS rebinding between check and connect fails;
- every redirect hop opens its own connection through the same check;
- the caller learns nothing of why: one generic message (`BLOCKED_MESSAGE`), whatever the target.

Operators can allow internal targets (an in-house image server, a webhook receiver on the same
host) with an allow-list of networks (`10.1.2.0/24`, `127.0.0.1`) and host names (`images.internal`,
`*.corp.example`), from the environment variable `SERVE_APP_OUTBOUND_ALLOW` (comma-separated) and
from config where a caller passes one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import typing
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import httpcore
import httpx

ALLOW_ENV = "SERVE_APP_OUTBOUND_ALLOW"
BLOCKED_MESSAGE = "could not download the file from this URL"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddress(Exception):
    """The URL's host is not a public address (or not resolvable). Its text is for logs only:
    callers get `BLOCKED_MESSAGE`."""


def literal_ip(host: str) -> IPAddress | None:
    """The address a host string spells, in any form a resolver would accept (dotted, decimal,
    octal, hex, short IPv4; IPv6 with brackets or a zone), else None (a name)."""
    host = host.strip().strip("[]")
    if "%" in host:
        host = host.split("%", 1)[0]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host) and host[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo, compatible)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def is_public(ip: IPAddress) -> bool:
    """Whether `ip` is a globally routable unicast address (and so is what it embeds)."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None and not is_public(inner):
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_private or ip.is_loopback or ip.is_link_local
                                 or ip.is_reserved or ip.is_unspecified)


def _parse_allow(entries: Iterable[str]) -> tuple[list[Network], list[str]]:
    networks: list[Network] = []
    hosts: list[str] = []
    for raw in entries:
        entry = raw.strip().lower()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            hosts.append(entry.rstrip("."))
    return networks, hosts


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the system resolver, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass
class UrlPolicy:
    """Which hosts outbound requests may reach. `allow` adds operator exceptions (networks and
    host names, `*.suffix` for a domain); the environment's `SERVE_APP_OUTBOUND_ALLOW` is added
    by `from_env`."""

    allow: Sequence[str] = ()
    resolver: Resolver = system_resolver
    _networks: list[Network] = field(default_factory=list, init=False, repr=False)
    _hosts: list[str] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self._networks, self._hosts = _parse_allow(self.allow)

    @classmethod
    def from_env(cls, extra: Iterable[str] = (), resolver: Resolver | None = None) -> UrlPolicy:
        """The policy with the operator's allow-list from `SERVE_APP_OUTBOUND_ALLOW` plus `extra`."""
        env = [e for e in os.environ.get(ALLOW_ENV, "").split(",") if e.strip()]
        return cls(allow=[*env, *extra], resolver=resolver or system_resolver)

    def host_allowed(self, host: str) -> bool:
        name = host.strip().strip("[]").lower().rstrip(".")
        return any(name == h or (h.startswith("*.") and name.endswith(h[1:])) for h in self._hosts)

    def address_allowed(self, ip: IPAddress) -> bool:
        if any(ip in net for net in self._networks if net.version == ip.version):
            return True
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return self.address_allowed(ip.ipv4_mapped)
        return is_public(ip)

    def check_literal(self, host: str) -> None:
        """Refuse a host that is itself a non-public address (no DNS: for checks at submit time)."""
        ip = literal_ip(host)
        if ip is not None and not self.address_allowed(ip) and not self.host_allowed(host):
            raise BlockedAddress(f"{host} is not a public address")

    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for `host`: all of them checked. Raises BlockedAddress when
        any resolved address is refused (a name that also resolves to 127.0.0.1 is refused whole)."""
        ip = literal_ip(host)
        if ip is not None:
            if not (self.address_allowed(ip) or self.host_allowed(host)):
                raise BlockedAddress(f"{host} is not a public address")
            return [str(ip)]
        try:
            addresses = await self.resolver(host, port)
        except OSError as e:
            raise BlockedAddress(f"{host} does not resolve: {e}") from e
        if not addresses:
            raise BlockedAddress(f"{host} does not resolve")
        if self.host_allowed(host):
            return addresses
        for address in addresses:
            resolved = literal_ip(address)
            if resolved is None or not self.address_allowed(resolved):
                raise BlockedAddress(f"{host} resolves to {address}, which is not a public address")
        return addresses


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves through the policy and connects to a checked address, never to the name."""

    def __init__(self, policy: UrlPolicy, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.policy = policy
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        addresses = await self.policy.resolve(host, port)
        error: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                    socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout, OSError) as e:
                error = e
        raise error or BlockedAddress(f"{host} has no address to connect to")

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress("unix sockets are not reachable from URLs")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport whose every connection (redirect hops included) goes through `policy`.
    Proxies from the environment are ignored: the connection must go where the check said."""

    def __init__(self, policy: UrlPolicy, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(ssl_context=httpx.create_ssl_context(trust_env=False),
                                                  network_backend=_GuardedBackend(policy, inner))


def url_host(url: str) -> tuple[str, str]:
    """`(scheme, host)` of an absolute URL, lower-cased scheme; raises ValueError when malformed."""
    parsed = httpx.URL(url)
    if not parsed.host:
        raise ValueError("the URL has no host")
    return parsed.scheme.lower(), parsed.host
