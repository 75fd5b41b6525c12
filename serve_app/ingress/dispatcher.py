"""Endpoint calls against the services' deployment handles, for HTTP routes, the queue and Python.

The service replica validates nothing twice, stores its own files and answers typed items; the
dispatcher only finds the endpoint, passes the request facts, bills completed calls and hands the
typed items on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import HTTPConnection

from serve_app.context import RequestInfo, cancel_call
from serve_app.endpoints import EndpointSpec, ServiceRoute
from serve_app.errors import RequestTimeout
from serve_app.events import Output, StreamItem
from serve_app.ingress.settings import IngressSettings
from serve_app.storage import DataUrlStore, LocalStore, S3Store, make_store

DEFAULT_BASE_URL = "http://127.0.0.1:8000/"


def _billing_counter() -> Any:
    """A Ray Serve metric (Prometheus `ray_serve_app_billable_units_total`), or None outside Ray."""
    try:
        from ray.serve.metrics import Counter

        return Counter("serve_app_billable_units", description="Billable units of completed requests.",
                       tag_keys=("service", "endpoint"))  # type: ignore[arg-type]
    except Exception:  # no Ray worker here (unit tests): nothing to export to
        return None


class Dispatcher:
    """Runs endpoint calls against service handles; outputs come back with their file URLs."""

    def __init__(self, routes: list[ServiceRoute], settings: IngressSettings,
                 timeouts: dict[str, float] | None = None) -> None:
        self.routes = routes
        self.settings = settings
        self.timeouts = timeouts or {}  # per service: `scaling.request_timeout_s`
        self.store: DataUrlStore | LocalStore | S3Store = make_store(settings.storage)
        self.by_path: dict[str, tuple[ServiceRoute, EndpointSpec]] = {
            spec.route(route.prefix): (route, spec) for route in routes for spec in route.endpoints
        }
        self._billed = _billing_counter()
        self.caller = RequestInfo.here()  # this process's CancelBoard: services stop work it cancels or orphans

    def _bill(self, route: ServiceRoute, spec: EndpointSpec, units: float) -> float:
        """Count units billed for a completed call (the `x-fal-billable-units` metric)."""
        if self._billed is not None:
            self._billed.inc(units, tags={"service": route.name, "endpoint": spec.route(route.prefix)})
        return units

    def lookup(self, path: str) -> tuple[ServiceRoute, EndpointSpec]:
        """The service and endpoint behind a sync path such as `/my-model/fast`."""
        key = "/" + path.strip("/")
        if key not in self.by_path:
            raise StarletteHTTPException(404, f"Path {key} not found")
        return self.by_path[key]

    def base_url(self, request: HTTPConnection | None) -> str:
        if self.settings.public_url:
            return self.settings.public_url
        return str(request.base_url) if request is not None else DEFAULT_BASE_URL

    def _prepare(self, path: str, body: BaseModel | dict[str, Any], request_id: str,
                 base_url: str) -> tuple[ServiceRoute, EndpointSpec, BaseModel, RequestInfo]:
        route, spec = self.lookup(path)
        payload = body if isinstance(body, spec.input_model) else spec.input_model.model_validate(body)
        return route, spec, payload, RequestInfo(request_id, spec.route(route.prefix), base_url, self.caller)

    async def run(self, path: str, body: BaseModel | dict[str, Any], request_id: str,
                  base_url: str, queued: bool = False) -> tuple[dict[str, Any], float, dict[str, float]]:
        """Call an endpoint to completion; returns `(output JSON, billable units, timings)`. The
        timings (seconds) are the replica's (`Output.timings`) and `call`, the handle call as this
        side sees it. Unless `queued` (queue jobs have their own bounds), the service's
        `request_timeout_s` applies: past it the call is cancelled and `RequestTimeout` (504) raised."""
        route, spec, payload, info = self._prepare(path, body, request_id, base_url)
        called = time.perf_counter()
        response = spec.handle_for(route.handle, payload).call_endpoint_timed.remote(spec.method, payload, info)
        timeout_s = None if queued else self.timeouts.get(route.name)
        try:
            output = await asyncio.wait_for(asyncio.shield(response), timeout_s) if timeout_s else await response
        except TimeoutError as e:
            cancel_call(response, info)
            raise RequestTimeout(f"The request took longer than {timeout_s:g} s and was cancelled.") from e
        except asyncio.CancelledError:
            cancel_call(response, info)
            raise
        timings = {**(output.timings or {}), "call": time.perf_counter() - called}
        return output.value.model_dump(mode="json"), self._bill(route, spec, spec.billable_units(payload)), timings

    async def stream(self, path: str, body: BaseModel | dict[str, Any], request_id: str,
                     base_url: str, queued: bool = False) -> tuple[AsyncIterator[StreamItem], float]:
        """Start a streaming call: typed events, then `Output`. The first item is awaited here, so a
        failure before any output raises (and becomes a real HTTP error) instead of hiding inside a
        200 stream. Closing the iterator early cancels the service's work. The service's
        `request_timeout_s` bounds the whole stream unless `queued`."""
        route, spec, payload, info = self._prepare(path, body, request_id, base_url)
        gen = spec.handle_for(route.handle, payload).options(stream=True).stream_endpoint.remote(spec.method, payload,
                                                                                                   info)
        timeout_s = None if queued else self.timeouts.get(route.name)
        deadline = asyncio.get_running_loop().time() + timeout_s if timeout_s else None

        async def next_item() -> StreamItem:
            if deadline is None:
                return await gen.__anext__()  # type: ignore[no-any-return]
            try:
                return await asyncio.wait_for(gen.__anext__(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except TimeoutError as e:
                cancel_call(gen, info)
                raise RequestTimeout(f"The request took longer than {timeout_s:g} s and was cancelled.") from e

        try:
            first = await next_item()
        except asyncio.CancelledError:
            cancel_call(gen, info)
            raise

        async def items() -> AsyncIterator[StreamItem]:
            item, exhausted = first, False
            try:
                while True:
                    yield item
                    try:
                        item = await next_item()
                    except StopAsyncIteration:
                        exhausted = True
                        if isinstance(item, Output):
                            self._bill(route, spec, spec.billable_units(payload))
                        return
            finally:
                if not exhausted:  # closed or cancelled early: stop the service's work too
                    cancel_call(gen, info)

        return items(), spec.billable_units(payload)
