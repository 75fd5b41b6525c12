"""What the queue needs of the layer above it: a way to run endpoint calls.

The ingress's `Dispatcher` provides it; the queue never imports the ingress.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from pydantic import BaseModel
from starlette.requests import HTTPConnection

from serve_app.endpoints import EndpointSpec, ServiceRoute
from serve_app.events import StreamItem


class HasHeartbeat(Protocol):
    heartbeat_s: float


class Dispatch(Protocol):
    """Endpoint calls by path, as the ingress runs them."""

    routes: list[ServiceRoute]

    @property
    def settings(self) -> HasHeartbeat: ...

    def lookup(self, path: str) -> tuple[ServiceRoute, EndpointSpec]: ...

    def base_url(self, request: HTTPConnection | None) -> str: ...

    async def run(self, path: str, body: BaseModel | dict[str, Any], request_id: str,
                  base_url: str, queued: bool = False) -> tuple[dict[str, Any], float, dict[str, float]]: ...

    async def stream(self, path: str, body: BaseModel | dict[str, Any], request_id: str,
                     base_url: str, queued: bool = False) -> tuple[AsyncIterator[StreamItem], float]: ...
