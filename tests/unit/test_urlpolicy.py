"""The outbound URL policy (issue 21.1): every spelling of a non-public address is refused, names
are resolved (mocked here) and every address checked, the connection goes to the checked address,
redirect hops are checked, the caller sees one message, and the app's own /files URLs are read from
its store. Only loopback servers are ever contacted."""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from serve_app.errors import FieldError
from serve_app.inputs import FetchOptions, fetch_url
from serve_app.io import File
from serve_app.storage import LocalStore, materialize, set_input_store
from serve_app.urlpolicy import BLOCKED_MESSAGE, BlockedAddress, GuardedTransport, UrlPolicy, is_public, literal_ip

FIELD = "image_url"

REFUSED_HOSTS = [
    "127.0.0.1", "127.8.9.10", "2130706433", "0x7f000001", "0x7f.0.0.1", "017700000001", "0177.0.0.1", "127.1",
    "0", "0.0.0.0", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "224.0.0.251",
    "239.255.255.250", "240.0.0.1", "255.255.255.255", "::1", "[::1]", "::", "::ffff:127.0.0.1", "[::ffff:7f00:1]",
    "::ffff:169.254.169.254", "64:ff9b::7f00:1", "2002:7f00:1::", "2001:0:4136:e378:8000:63bf:80ff:fffe",
    "fe80::1", "fe80::1%eth0", "fc00::1", "fd12:3456::1", "ff02::1", "2001:db8::1",
]
PUBLIC_HOSTS = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_every_spelling_of_a_non_public_address_is_refused(host: str) -> None:
    ip = literal_ip(host)
    assert ip is not None and not is_public(ip)
    with pytest.raises(BlockedAddress):
        UrlPolicy().check_literal(host)
    with pytest.raises(BlockedAddress):
        asyncio.run(UrlPolicy(resolver=_no_dns).resolve(host, 80))


@pytest.mark.parametrize("host", PUBLIC_HOSTS)
def test_public_addresses_pass(host: str) -> None:
    assert asyncio.run(UrlPolicy(resolver=_no_dns).resolve(host, 443)) == [str(literal_ip(host))]


async def _no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"no resolution expected for {host}")


def resolver(table: dict[str, list[str]]) -> Any:
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        if host not in table:
            raise socket.gaierror(f"unknown host {host}")
        return table[host]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def test_names_are_resolved_and_every_address_checked() -> None:
    policy = UrlPolicy(resolver=resolver({"cdn.example": ["93.184.216.34"],
                                          "rebind.example": ["93.184.216.34", "127.0.0.1"],
                                          "internal.example": ["10.1.2.3"]}))
    assert asyncio.run(policy.resolve("cdn.example", 443)) == ["93.184.216.34"]
    for host in ("rebind.example", "internal.example", "nowhere.example"):
        with pytest.raises(BlockedAddress):
            asyncio.run(policy.resolve(host, 443))


def test_the_operator_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    table = resolver({"images.internal": ["10.1.2.3"], "a.corp.example": ["192.168.0.9"]})
    policy = UrlPolicy(allow=["10.1.0.0/16", "*.corp.example", "127.0.0.1"], resolver=table)
    assert asyncio.run(policy.resolve("images.internal", 80)) == ["10.1.2.3"]
    assert asyncio.run(policy.resolve("a.corp.example", 80)) == ["192.168.0.9"]
    assert asyncio.run(policy.resolve("127.0.0.1", 80)) == ["127.0.0.1"]
    with pytest.raises(BlockedAddress):
        asyncio.run(policy.resolve("127.0.0.2", 80))
    monkeypatch.setenv("SERVE_APP_OUTBOUND_ALLOW", "192.168.7.0/24, hooks.lan")
    env = UrlPolicy.from_env(resolver=resolver({"hooks.lan": ["192.168.1.1"]}))
    assert asyncio.run(env.resolve("192.168.7.7", 80)) == ["192.168.7.7"]
    assert asyncio.run(env.resolve("hooks.lan", 80)) == ["192.168.1.1"]


class Recorder(httpcore.AsyncNetworkBackend):
    """The network below the policy: records where it was asked to connect, connects nowhere."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        raise httpcore.ConnectError("recorded, not connected")


def test_the_connection_goes_to_the_address_that_was_checked() -> None:
    """DNS rebinding: the name is resolved once, checked, and the socket opens to that address, never
    to the name (which a second lookup could point elsewhere)."""
    table = resolver({"rebinding.example": ["127.0.0.9"]})
    network = Recorder()
    transport = GuardedTransport(UrlPolicy(allow=["127.0.0.9"], resolver=table), inner=network)

    async def get() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get("http://rebinding.example:8081/x")

    asyncio.run(get())
    assert network.connects == [("127.0.0.9", 8081)] and table.calls == ["rebinding.example"]


class _Handler(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        if self.path == "/ok":
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
        else:  # a redirect to somewhere the caller may not go
            self.send_response(302)
            self.send_header("location", self.target)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def loopback_server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def fetch_message(url: str, options: FetchOptions | None = None) -> str:
    with pytest.raises(FieldError) as e:
        asyncio.run(fetch_url(url, FIELD, options))
    assert e.value.detail[0]["loc"] == ["body", FIELD]
    return e.value.message


def test_loopback_services_are_unreachable_and_all_failures_read_the_same(loopback_server: str) -> None:
    """The 2024 finding: the Ray dashboard on 127.0.0.1:8265 was fetched, and error texts told open
    from closed ports. Now an open port, a closed one and a private host read alike."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    messages = {fetch_message(url) for url in (f"{loopback_server}/ok", f"http://127.0.0.1:{closed}/",
                                               "http://2130706433:8265/api/jobs/", "http://[::1]:8265/",
                                               "http://169.254.169.254/latest/meta-data/")}
    assert messages == {BLOCKED_MESSAGE}


def test_every_redirect_hop_is_checked(loopback_server: str) -> None:
    allowed = FetchOptions(allow=("127.0.0.1/32",))
    assert asyncio.run(fetch_url(f"{loopback_server}/ok", FIELD, allowed)) == b"ok"
    _Handler.target = "http://127.0.0.2:8265/api/jobs/"  # loopback too, but not allow-listed
    assert fetch_message(f"{loopback_server}/redirect", allowed) == BLOCKED_MESSAGE
    _Handler.target = "file:///etc/passwd"
    assert fetch_message(f"{loopback_server}/redirect", allowed) == BLOCKED_MESSAGE


def test_the_apps_own_file_urls_are_read_from_its_store(tmp_path: Path) -> None:
    """Dev passes `http://127.0.0.1:<port>/files/...` URLs as inputs: read from the store, no HTTP
    (the port is a closed one: nothing there could answer)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{s.getsockname()[1]}"
    store = LocalStore(tmp_path)
    stored = File.from_bytes(b"zip bytes", "application/zip", "photos.zip")
    asyncio.run(materialize(stored, store, base + "/"))
    set_input_store(store)
    assert asyncio.run(fetch_url(stored.url, FIELD)) == b"zip bytes"
    elsewhere = stored.url.replace(base, "https://api.example.com/prefix")
    assert asyncio.run(fetch_url(elsewhere, FIELD)) == b"zip bytes"  # the key names the file
    with pytest.raises(FieldError, match="larger than the limit of 3 bytes"):
        asyncio.run(fetch_url(stored.url, FIELD, FetchOptions(max_bytes=3)))
    unknown = base + "/files/" + "0" * 32 + "/photos.zip"
    assert fetch_message(unknown) == BLOCKED_MESSAGE  # not ours: fetched, so refused (loopback)


def test_a_slow_drip_is_cut_off_by_its_rate() -> None:
    class Drip(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            while True:
                await asyncio.sleep(0.05)
                yield b"x"

    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=Drip()))
    options = FetchOptions(timeout_s=30, min_rate_bytes_s=1000, rate_grace_s=0.3)
    with pytest.raises(FieldError, match="slower than 1000 bytes/s"):
        asyncio.run(fetch_url("https://example.test/a.zip", FIELD, options, transport))


def test_the_s3_stores_urls_are_read_with_its_credentials() -> None:
    """The S3 store's presigned URLs point at a (here loopback) endpoint the policy refuses: a replica
    reads them through the store instead."""
    from serve_app.storage import S3Storage, make_store
    from tests.fakes.s3 import local_s3

    with local_s3() as s3:
        store = make_store(S3Storage(bucket=s3.bucket, endpoint_url=s3.endpoint_url, prefix="in/",
                                     addressing_style="path"))
        url = asyncio.run(store.put(b"zip!", "application/zip", "data.zip", "http://unused/"))
        assert "X-Amz-Signature=" in url and url.split("?")[0].endswith("/data.zip")
        assert asyncio.run(fetch_url(url, FIELD)) == b"zip!"
        assert fetch_message(url.replace("/in/", "/other/")) == BLOCKED_MESSAGE  # not this store's key
