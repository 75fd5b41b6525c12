"""Helpers for the realtime services' tests: a session driven in process over a `LocalConnection`,
this process's WebRTC peer kept to loopback candidates, a service's realtime WebSocket URL and
stats through its deployment handle."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from serve_app.realtime import LocalConnection
from serve_app.service import RunContext
from serve_app.webrtc import restrict_host_addresses

Body = Callable[[LocalConnection, "asyncio.Future[None]"], Awaitable[Any]]


def run_local_session(service: Any, body: Body, timeout_s: float) -> Any:
    """Start `service.session` on a msgpack `LocalConnection`, run `body(conn, task)` against it, then
    close the client side (if the session still runs) and wait up to `timeout_s` for it to end."""

    async def scenario() -> Any:
        conn = LocalConnection(encoding="msgpack")
        task = asyncio.ensure_future(service.session(conn, RunContext("test")))
        try:
            return await body(conn, task)
        finally:
            if not task.done():
                await conn.client_close()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), timeout_s)

    restrict_host_addresses(["127.0.0.1"])
    return asyncio.run(scenario())


@contextmanager
def loopback_candidates() -> Iterator[None]:
    """This process's peer offers loopback host candidates only, for the block."""
    restrict_host_addresses(["127.0.0.1"])
    try:
        yield
    finally:
        restrict_host_addresses(None)


def realtime_url(serve_url: str, service: str) -> str:
    return serve_url.replace("http://", "ws://") + f"/{service}/realtime"


def service_stats(service: str) -> dict[str, Any]:
    """The service's `stats()` through its deployment handle in the `default` app."""
    from ray import serve

    return serve.get_deployment_handle(service, app_name="default").stats.remote().result(  # type: ignore[no-any-return]
        timeout_s=30)
