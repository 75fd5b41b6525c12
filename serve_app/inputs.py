"""Fetching a file that a request names by URL: http(s) or `data:`; the app's own file URLs are
read from its output store.

Every failure is the caller's input problem, so it is a `FieldError` on the field that held the
URL (a 422 naming it). Outbound requests follow `serve_app.urlpolicy`: only public addresses (plus
an operator allow-list), checked on every redirect hop and connected to as checked, and one
generic message whatever went wrong, so a caller cannot map what the server can reach. Only a
file over the size limit and a download over the time limit say so.

Downloads are streamed and stop as soon as they pass the size limit (after content decoding, so a
gzip bomb stops too), the whole download has a deadline, and a server that drips bytes is cut off
once its average rate stays under `min_rate_bytes_s`. URLs of the application's own files
(`.../files/<key>` of a local store, the S3 store's URLs) are read from the store this replica
writes to (`storage.input_store()`), never over HTTP. data: URLs are decoded in a worker thread.
Nothing here blocks the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
import urllib.parse
from dataclasses import dataclass

import httpx

from serve_app.errors import FieldError
from serve_app.storage import input_store
from serve_app.urlpolicy import BLOCKED_MESSAGE, BlockedAddress, GuardedTransport, UrlPolicy

logger = logging.getLogger("ray.serve")

DEFAULT_MAX_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class FetchOptions:
    """Limits of one fetch."""

    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = 120.0  # the whole download
    connect_timeout_s: float = 10.0
    max_redirects: int = 5
    min_rate_bytes_s: float = 64 * 1024  # average, once `rate_grace_s` have passed
    rate_grace_s: float = 5.0
    allow: tuple[str, ...] = ()  # extra allow-list entries (see urlpolicy)


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


def _blocked(field: str) -> FieldError:
    return FieldError(field, BLOCKED_MESSAGE)


class _TooSlow(Exception):
    pass


async def _download(url: str, field: str, options: FetchOptions, transport: httpx.AsyncBaseTransport) -> bytes:
    timeout = httpx.Timeout(options.timeout_s, connect=options.connect_timeout_s)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=True, max_redirects=options.max_redirects,
                                 transport=transport, trust_env=False) as client, \
            client.stream("GET", url) as response:
        if response.status_code >= 400:
            logger.info("input %s: HTTP %d", field, response.status_code)
            raise _blocked(field)
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > options.max_bytes:
            raise _too_large(field, options.max_bytes)
        out = bytearray()
        started = time.monotonic()
        async for chunk in response.aiter_bytes():
            out += chunk
            if len(out) > options.max_bytes:
                raise _too_large(field, options.max_bytes)
            elapsed = time.monotonic() - started
            if elapsed > options.rate_grace_s and len(out) / elapsed < options.min_rate_bytes_s:
                raise _TooSlow(f"{len(out)} bytes in {elapsed:.1f} s")
        return bytes(out)


async def _read_own_file(url: str, field: str, max_bytes: int) -> bytes | None:
    """The content of one of the application's own files that `url` names, from the store; None
    when `url` is not one of them."""
    store = input_store()
    key = store.key_for_url(url) if store is not None else None
    if store is None or key is None:
        return None
    try:
        return await store.read(key, max_bytes)
    except ValueError as e:
        raise _too_large(field, max_bytes) from e
    except Exception as e:  # gone since (swept), or the bucket refused
        logger.info("input %s: own file %s unreadable: %r", field, key, e)
        raise _blocked(field) from e


async def fetch_url(url: str, field: str, options: FetchOptions | None = None,
                    transport: httpx.AsyncBaseTransport | None = None) -> bytes:
    """Download (http, https), read from the app's store (its own file URLs) or decode (data:) the
    file behind `url`.

    Args:
        url: what the request gave.
        field: the input field named in errors.
        options: size and time limits, extra allow-list entries.
        transport: an httpx transport that replaces the guarded one (tests: `httpx.MockTransport`).

    Raises:
        FieldError: see the module docstring.
    """
    options = options or FetchOptions()
    url = url.strip() if url else ""
    scheme = urllib.parse.urlsplit(url).scheme.lower() if url else ""
    if scheme == "data":
        return await asyncio.to_thread(decode_data_url, url, field, options.max_bytes)
    if scheme not in ("http", "https"):
        raise FieldError(field, f"unsupported URL scheme {scheme or '(none)'!r}: use http(s) or data: URLs")
    own = await _read_own_file(url, field, options.max_bytes)
    if own is not None:
        return own
    transport = transport or GuardedTransport(UrlPolicy.from_env(options.allow))
    try:
        async with asyncio.timeout(options.timeout_s):
            return await _download(url, field, options, transport)
    except TimeoutError as e:
        raise FieldError(field, f"downloading the file took longer than {options.timeout_s:g} s") from e
    except _TooSlow as e:
        logger.info("input %s: download too slow (%s)", field, e)
        raise FieldError(field, f"the download was slower than {options.min_rate_bytes_s:g} bytes/s") from e
    except (BlockedAddress, httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as e:
        logger.info("input %s: %s refused or failed: %r", field, url[:200], e)
        raise _blocked(field) from e
