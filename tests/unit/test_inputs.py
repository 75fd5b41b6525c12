"""Fetching input files by URL: data: URLs, http(s) through a real local server, and httpx's
MockTransport for the network edge cases (error statuses, size caps, slow servers, redirects)."""

from __future__ import annotations

import asyncio
import base64
import http.server
import itertools
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_app.errors import FieldError
from serve_app.inputs import FetchOptions, decode_data_url, fetch_url
from serve_app.urlpolicy import BLOCKED_MESSAGE

FIELD = "images_data_url"


def fetch(url: str, options: FetchOptions | None = None, transport: httpx.AsyncBaseTransport | None = None) -> bytes:
    return asyncio.run(fetch_url(url, FIELD, options, transport))


def fetch_error(url: str, options: FetchOptions | None = None,
                transport: httpx.AsyncBaseTransport | None = None) -> FieldError:
    with pytest.raises(FieldError) as e:
        fetch(url, options, transport)
    assert e.value.detail[0]["loc"] == ["body", FIELD]
    return e.value


# ----------------------------------------------------------------------------------- data: URLs
def test_base64_data_urls() -> None:
    payload = bytes(range(256)) * 10
    b64 = base64.b64encode(payload).decode()
    assert fetch(f"data:application/zip;base64,{b64}") == payload
    assert fetch(f"DATA:;BASE64,{b64[:40]}\n{b64[40:]}") == payload  # case and line breaks
    assert fetch(f"data:application/zip;name=x.zip;base64,{b64}") == payload


def test_plain_data_urls_are_percent_decoded() -> None:
    assert fetch("data:,hello%20world%00") == b"hello world\x00"
    assert fetch("data:text/plain;charset=utf-8,caf%C3%A9") == "café".encode()


@pytest.mark.parametrize("url, match", [
    ("data:application/zip;base64", "no comma"),
    ("data:application/zip;base64,abc$", "bad base64"),
    ("data:application/zip;base64,abcde", "bad base64"),
])
def test_malformed_data_urls(url: str, match: str) -> None:
    assert match in fetch_error(url).message


def test_data_url_size_limit() -> None:
    small = FetchOptions(max_bytes=100)
    assert len(fetch("data:;base64," + base64.b64encode(b"x" * 100).decode(), small)) == 100
    assert "larger than" in fetch_error("data:;base64," + base64.b64encode(b"x" * 101).decode(), small).message
    assert "larger than" in fetch_error("data:;base64," + "A" * 10_000, small).message  # before decoding
    assert "larger than" in fetch_error("data:," + "x" * 101, small).message


def test_decode_data_url_is_a_plain_function() -> None:
    assert decode_data_url("data:;base64,aGk=", FIELD) == b"hi"
    with pytest.raises(FieldError, match="not a data: URL"):
        decode_data_url("http://x", FIELD)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.zip", "s3://bucket/a.zip", "",
                                 "just-a-name.zip", "/files/abc.zip"])
def test_unsupported_schemes(url: str) -> None:
    assert "unsupported URL scheme" in fetch_error(url).message


# ----------------------------------------------------------------------------------- http(s)
class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/data.zip":
            body = b"zip-bytes" * 1000
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


LOOPBACK_ALLOWED = FetchOptions(allow=("127.0.0.1",))  # an operator's allow-list: loopback is refused otherwise


def test_real_http_download_and_errors(server: str) -> None:
    assert fetch(f"{server}/data.zip", LOOPBACK_ALLOWED) == b"zip-bytes" * 1000
    assert fetch_error(f"{server}/missing.zip", LOOPBACK_ALLOWED).message == BLOCKED_MESSAGE
    assert "larger than" in fetch_error(f"{server}/data.zip", FetchOptions(max_bytes=100, allow=("127.0.0.1",))).message
    assert fetch_error(f"{server}/data.zip").message == BLOCKED_MESSAGE  # no allow-list: loopback is refused


def test_unreachable_host() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert fetch_error(f"http://127.0.0.1:{port}/a.zip", LOOPBACK_ALLOWED).message == BLOCKED_MESSAGE


def _chunks(n: int, size: int) -> httpx.AsyncByteStream:
    class Stream(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            for _ in range(n):
                yield b"\0" * size

    return Stream()


def test_streamed_size_cap_without_content_length() -> None:
    served = []

    def handler(request: httpx.Request) -> httpx.Response:
        served.append(request.url.path)
        return httpx.Response(200, stream=_chunks(1000, 1024))  # 1 MB, no content-length

    err = fetch_error("https://example.test/a.zip", FetchOptions(max_bytes=10_000), httpx.MockTransport(handler))
    assert "larger than the limit of 10000" in err.message and served == ["/a.zip"]


def test_declared_content_length_over_the_cap_fails_before_reading() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-length": str(10**12)}, stream=_chunks(1, 10))

    assert "larger than" in fetch_error("https://example.test/a.zip", FetchOptions(max_bytes=1000),
                                        httpx.MockTransport(handler)).message


def test_a_slow_server_hits_the_whole_download_timeout() -> None:
    class Drip(httpx.AsyncByteStream):
        async def __aiter__(self):  # type: ignore[no-untyped-def]
            while True:  # never idle long enough for a read timeout, never done
                await asyncio.sleep(0.05)
                yield b"x"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Drip())

    err = fetch_error("https://example.test/a.zip", FetchOptions(timeout_s=0.5), httpx.MockTransport(handler))
    assert "longer than 0.5 s" in err.message


def test_redirects_are_followed_but_bounded() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/final.zip":
            return httpx.Response(200, content=b"done")
        if request.url.path == "/loop":
            return httpx.Response(302, headers={"location": "/loop"})
        return httpx.Response(302, headers={"location": "/final.zip"})

    transport = httpx.MockTransport(handler)
    assert fetch("https://example.test/start", transport=transport) == b"done"
    assert fetch_error("https://example.test/loop", transport=transport).message == BLOCKED_MESSAGE


def test_server_errors_and_gzip_bombs() -> None:
    import gzip

    bomb = gzip.compress(b"\0" * 1_000_000)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/boom":
            return httpx.Response(500)
        return httpx.Response(200, headers={"content-encoding": "gzip"}, content=bomb)

    transport = httpx.MockTransport(handler)
    assert fetch_error("https://example.test/boom", transport=transport).message == BLOCKED_MESSAGE
    assert len(bomb) < 10_000
    assert "larger than" in fetch_error("https://example.test/bomb", FetchOptions(max_bytes=100_000),
                                        transport).message


# ----------------------------------------------------------------------------------- POST /files
def upload_app(tmp_path: Path, **settings: Any) -> Any:
    from serve_app.ingress import Dispatcher, IngressSettings, create_app

    storage = {"kind": "local", "directory": str(tmp_path)}
    return create_app(Dispatcher([], IngressSettings(storage=storage, **settings)))  # type: ignore[arg-type]


def test_upload_raw_body_then_fetch_it_back_by_url(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    app = upload_app(tmp_path)
    payload = bytes(range(256)) * 100
    with TestClient(app, base_url="http://serve.test") as http:
        r = http.post("/files?file_name=dir/my%20data.zip", content=payload,
                      headers={"content-type": "application/zip"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["url"].startswith("http://serve.test/files/") and body["url"].endswith("/my_data.zip")
        assert body == {"url": body["url"], "content_type": "application/zip", "file_name": "my_data.zip",
                        "file_size": len(payload)}
        assert http.get(body["url"]).content == payload
    # What a service does with the URL: the same bytes, through fetch_url, read from the store.
    assert fetch(body["url"]) == payload


def test_upload_multipart_file(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    payload = b"PK\x03\x04" + bytes(range(256)) * 50 + b"\r\n--boundary-like\r\n"
    with TestClient(upload_app(tmp_path)) as http:
        r = http.post("/files", files={"file": ("photos.zip", payload, "application/zip")}, data={"note": "x"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["file_name"], body["content_type"], body["file_size"]) == ("photos.zip", "application/zip",
                                                                                len(payload))
        assert http.get(body["url"]).content == payload
        r = http.post("/files", files={"other": ("a.bin", b"x")})  # no `file` part: the first named file
        assert r.status_code == 200 and r.json()["file_name"] == "a.bin"
        r = http.post("/files", data={"note": "no file at all"}, files={"x": (None, b"y")})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "file"]


def test_upload_limits_and_errors(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    with TestClient(upload_app(tmp_path, max_upload_bytes=1000)) as http:
        assert http.post("/files", content=b"x" * 1000).status_code == 200
        r = http.post("/files", content=b"x" * 1001)
        assert r.status_code == 413 and "1000" in r.json()["detail"]
        assert r.headers["x-fal-billable-units"] == "0"

        def chunks() -> Iterator[bytes]:  # no content-length: the stream itself is counted
            for _ in range(20):
                yield b"y" * 100

        assert http.post("/files", content=chunks()).status_code == 413
        r = http.post("/files", content=b"")
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "file"]
    with TestClient(upload_app(tmp_path, max_upload_bytes=0)) as http:  # uploads off
        assert http.post("/files", content=b"x").status_code in (404, 405)


@pytest.mark.parametrize("form", [False, True], ids=["raw", "multipart"])
def test_uploads_stream_to_disk_and_never_sit_in_memory(tmp_path: Path, form: bool) -> None:
    """40 MiB through a real server (uvicorn on loopback, in this process): Python's peak allocation
    while the upload runs stays a small fraction of it, and a refused upload leaves no partial file."""
    import time
    import tracemalloc

    import uvicorn

    size, chunk = 40 * 1024 * 1024, b"z" * 65536
    app = upload_app(tmp_path, max_upload_bytes=size + 1024 * 1024)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    boundary = "b0undary"

    def body() -> Iterator[bytes]:
        if form:
            yield (f"--{boundary}\r\ncontent-disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
                   f"--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"big.bin\"\r\n"
                   "content-type: application/octet-stream\r\n\r\n").encode()
        for _ in range(size // len(chunk)):
            yield chunk
        if form:
            yield f"\r\n--{boundary}--\r\n".encode()

    content_type = f"multipart/form-data; boundary={boundary}" if form else "application/octet-stream"
    try:
        tracemalloc.start()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            r = http.post("/files?file_name=big.bin", content=body(), headers={"content-type": content_type})
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert r.status_code == 200, r.text
            assert r.json()["file_size"] == size and r.json()["file_name"] == "big.bin"
            assert peak < size / 8, f"peak Python allocation {peak / 2**20:.1f} MiB for a 40 MiB upload"
            stored = [p for p in tmp_path.iterdir() if p.name.endswith("big.bin")]
            assert len(stored) == 1 and stored[0].stat().st_size == size

            def endless() -> Iterator[bytes]:  # past the limit, no content-length
                yield from itertools.islice(body(), 1)  # the form's head (or the first chunk)
                for _ in range(2 * size // len(chunk)):
                    yield chunk

            assert http.post("/files", content=endless(), headers={"content-type": content_type}).status_code == 413
            assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        server.should_exit = True
        thread.join(10)


def test_upload_needs_the_api_key_when_keys_are_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    monkeypatch.setenv("UPLOAD_TEST_KEYS", "k1")
    with TestClient(upload_app(tmp_path, api_key_env=["UPLOAD_TEST_KEYS"])) as http:
        assert http.post("/files", content=b"x").status_code == 401
        r = http.post("/files", content=b"x", headers={"authorization": "Key k1"})
        assert r.status_code == 200
        assert http.get(r.json()["url"]).status_code == 200  # downloads stay open
