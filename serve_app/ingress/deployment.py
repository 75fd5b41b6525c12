"""The ingress deployment: the FastAPI app in a Serve replica, plus the Python API on handles."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from ray import serve

from serve_app.endpoints import ServiceRoute
from serve_app.events import Output
from serve_app.ingress.app import create_app
from serve_app.ingress.dispatcher import Dispatcher
from serve_app.ingress.health import replica_health
from serve_app.ingress.middleware import install_input_guard
from serve_app.ingress.settings import IngressSettings
from serve_app.limits import RequestLimits
from serve_app.storage import check_local_store_node

READY_CACHE_S = 0.5


def _app_status(app_name: str) -> dict[str, str]:
    """Each deployment's status per Serve's controller (a blocking call: run it in a thread)."""
    status = serve.status().applications[app_name]
    return {name: str(d.status.value if hasattr(d.status, "value") else d.status)
            for name, d in status.deployments.items()}


@serve.ingress()
class Ingress:
    """The ingress deployment. Bound by `build_app` with the services' handles."""

    def __init__(self, routes: list[ServiceRoute], settings: IngressSettings, limits: RequestLimits | None = None,
                 timeouts: dict[str, float] | None = None) -> None:
        check_local_store_node(settings.storage, "the ingress")
        self.limits = limits or RequestLimits()
        self.dispatcher = Dispatcher(routes, settings, timeouts)
        self._started = time.time()
        self._ready_cache: tuple[float, tuple[bool, dict[str, Any]]] | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = create_app(self.dispatcher, ready=self.readiness)
        install_input_guard(app, self.limits.max_body_bytes)
        return app

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether every deployment of this application is healthy: Serve's controller's view, and
        each service replica's own `check_health` asked now (a rank that died a moment ago shows at
        once, not at the controller's next health check). Cached for `READY_CACHE_S`."""
        now = time.monotonic()
        if self._ready_cache is not None and now - self._ready_cache[0] < READY_CACHE_S:
            return self._ready_cache[1]
        timeout_s = self.dispatcher.settings.ready_timeout_s
        try:
            app_name = serve.get_replica_context().app_name
            details, failing = await asyncio.wait_for(asyncio.gather(
                asyncio.to_thread(_app_status, app_name), replica_health(app_name, timeout_s / 2)), timeout_s)
        except Exception as exc:  # no controller answer in time: not ready
            return False, {"error": type(exc).__name__}
        details = {**details, **{name: "UNHEALTHY" for name in failing}}
        answer = all(v == "HEALTHY" for v in details.values()), details
        self._ready_cache = (now, answer)
        return answer

    async def run(self, path: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Python API, like `fal_client.run`: call `path` (e.g. "/my-model") and return its output JSON."""
        output, _, _ = await self.dispatcher.run(path, arguments, uuid.uuid4().hex, self.dispatcher.base_url(None))
        return output

    async def stream(self, path: str, arguments: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Python API, like `fal_client.stream`: event JSON, then the output JSON."""
        items, _ = await self.dispatcher.stream(path, arguments, uuid.uuid4().hex, self.dispatcher.base_url(None))
        async for item in items:
            yield item.to_json()
            if isinstance(item, Output):
                return
