"""Fetching a file that a request names by URL: http(s) (our own `/files` URLs included) or `data:`.

Every failure is the caller's input problem, so it is a `FieldError` on the field that held the
URL (a 422 naming it): an unsupported scheme, a malformed data: URL, an unreachable host, an HTTP
error status, a download that takes too long, or a file over the size limit. Downloads are
streamed and stop as soon as they pass the limit (after content decoding, so a gzip bomb stops
too); data: URLs are decoded in a worker thread. Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import urllib.parse
from dataclasses import dataclass
from typing import Any

import httpx

from serve_app.errors import FieldError

DEFAULT_MAX_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class FetchOptions:
    """Limits of one fetch."""

    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = 120.0  # the whole download
    connect_timeout_s: float = 10.0
    max_redirects: int = 5


def _too_large(field: str, max_bytes: int) -> FieldError:
    return FieldError(field, f"the file is larger than the limit of {max_bytes} bytes")


def decode_data_url(url: str, field: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of a `data:[<type>][;base64],<data>` URL (RFC 2397).

    Raises:
        FieldError: not a data: URL, malformed, or larger than `max_bytes` once decoded.
    """
    if url[:5].lower() != "data:":
        raise FieldError(field, "not a data: URL")
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise FieldError(field, "malformed data: URL (no comma before the data)")
    if header.lower().endswith(";base64"):
        compact = "".join(payload.split())
        if len(compact) // 4 * 3 > max_bytes + 2:  # cheap bound before decoding anything
            raise _too_large(field, max_bytes)
        try:
            data = base64.b64decode(urllib.parse.unquote(compact), validate=True)
        except (binascii.Error, ValueError) as e:
            raise FieldError(field, f"malformed data: URL (bad base64: {e})") from e
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise _too_large(field, max_bytes)
    return data


async def _download(url: str, field: str, options: FetchOptions, transport: httpx.AsyncBaseTransport | None) -> bytes:
    timeout = httpx.Timeout(options.timeout_s, connect=options.connect_timeout_s)
    kwargs: dict[str, Any] = {"timeout": timeout, "follow_redirects": True, "max_redirects": options.max_redirects}
    if transport is not None:
        kwargs["transport"] = transport
    async with httpx.AsyncClient(**kwargs) as client, client.stream("GET", url) as response:
        if response.status_code >= 400:
            raise FieldError(field, f"could not download the file: HTTP {response.status_code}")
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > options.max_bytes:
            raise _too_large(field, options.max_bytes)
        out = bytearray()
        async for chunk in response.aiter_bytes():
            out += chunk
            if len(out) > options.max_bytes:
                raise _too_large(field, options.max_bytes)
        return bytes(out)


async def fetch_url(url: str, field: str, options: FetchOptions | None = None,
                    transport: httpx.AsyncBaseTransport | None = None) -> bytes:
    """Download (http, https) or decode (data:) the file behind `url`.

    Args:
        url: what the request gave.
        field: the input field named in errors.
        options: size and time limits.
        transport: an httpx transport (tests use `httpx.MockTransport`).

    Raises:
        FieldError: see the module docstring.
    """
    options = options or FetchOptions()
    scheme = urllib.parse.urlsplit(url.strip()).scheme.lower() if url else ""
    if scheme == "data":
        return await asyncio.to_thread(decode_data_url, url.strip(), field, options.max_bytes)
    if scheme not in ("http", "https"):
        raise FieldError(field, f"unsupported URL scheme {scheme or '(none)'!r}: use http(s) or data: URLs")
    try:
        async with asyncio.timeout(options.timeout_s):
            return await _download(url.strip(), field, options, transport)
    except TimeoutError as e:
        raise FieldError(field, f"downloading the file took longer than {options.timeout_s:g} s") from e
    except httpx.InvalidURL as e:
        raise FieldError(field, f"invalid URL: {e}") from e
    except httpx.TooManyRedirects as e:
        raise FieldError(field, "could not download the file: too many redirects") from e
    except httpx.HTTPError as e:
        raise FieldError(field, f"could not download the file: {type(e).__name__}: {e}") from e
