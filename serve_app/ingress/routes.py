"""The sync and SSE routes generated from a service's endpoint specs.

For every endpoint `E` of a service mounted at `/name`: `POST /name<E.path>` (JSON) and
`POST /name<E.path>/stream` (SSE: event frames, then the output frame). fal-style ids work too:
`POST /<owner>/name<E.path>[/stream]` for each owner alias of the queue settings (`fal-ai`), so
`fal_client.run("fal-ai/name")` reaches the same endpoint; an unknown path is a plain 404, stream
paths included.
"""

# No `from __future__ import annotations` here: FastAPI must see the real (local) input models.
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse

from serve_app.endpoints import EndpointSpec, ServiceRoute
from serve_app.errors import to_http
from serve_app.http import BILLING_HEADER, SERVER_TIMING_HEADER, error_response, format_units, server_timing
from serve_app.ingress.dispatcher import Dispatcher
from serve_app.ingress.docs import ENDPOINT_EXTENSION, EventStreamResponse, stream_frame_model
from serve_app.metrics import RequestMetrics
from serve_app.queue.schemas import ErrorBody
from serve_app.streaming import SSE_HEADERS, sse_frame, with_heartbeats

logger = logging.getLogger("ray.serve")

# What a call can answer besides its output (and FastAPI's own 422), in fal's error shape.
CALL_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or unknown API key (when keys are configured)"},
    413: {"model": ErrorBody, "description": "The request body is larger than the limit"},
    499: {"model": ErrorBody, "description": "Cancelled: the client went away"},
    500: {"model": ErrorBody, "description": "Internal failure (nothing internal leaks; the request id is given)"},
    503: {"model": ErrorBody, "description": "Overloaded or unavailable; retry after `Retry-After` seconds"},
    504: {"model": ErrorBody, "description": "The call ran past its time limit"},
}


def owner_alias_prefixes(dispatcher: Dispatcher) -> list[str]:
    """`/fal-ai`-style prefixes accepted before an endpoint path (the queue's `owner_aliases`)."""
    return [f"/{a.strip('/')}" for a in dispatcher.settings.queue.owner_aliases if a.strip("/")]


def endpoint_extension(dispatcher: Dispatcher, route: ServiceRoute, spec: EndpointSpec) -> dict[str, Any]:
    """What the playground needs to know of an endpoint beyond its schemas."""
    path = spec.route(route.prefix)
    queue = dispatcher.settings.queue
    return {"service": route.name, "id": path.lstrip("/"), "path": path,
            "stream": f"{path}/stream" if spec.stream else None,
            "queue": f"{queue.route_prefix}{path}" if queue.enabled else None}


def add_endpoint_routes(app: FastAPI, dispatcher: Dispatcher, route: ServiceRoute, spec: EndpointSpec,
                        dependencies: list[Any], metrics: RequestMetrics | None = None) -> None:
    """Mount one endpoint's sync route (and its stream route when the endpoint streams), at its path
    and under each owner alias."""
    path = spec.route(route.prefix)
    input_model = spec.input_model
    heartbeat_s = dispatcher.settings.heartbeat_s
    metrics = metrics or RequestMetrics()

    async def call(request: Request, body: Annotated[input_model, Body()]) -> JSONResponse:  # type: ignore[valid-type]
        request_id, started = request.state.request_id, time.monotonic()
        try:
            output, units, timings = await dispatcher.run(path, body, request_id, dispatcher.base_url(request))
        except Exception as exc:
            response = error_response(exc, request_id)
        else:
            timings["ingress"] = time.monotonic() - started
            response = JSONResponse(output, headers={BILLING_HEADER: format_units(units),
                                                     SERVER_TIMING_HEADER: server_timing(timings)})
        metrics.record(route.name, path, "sync", response.status_code, started)
        return response

    async def stream(request: Request, body: Annotated[input_model, Body()]) -> Any:  # type: ignore[valid-type]
        request_id, started = request.state.request_id, time.monotonic()
        try:
            items, units = await dispatcher.stream(path, body, request_id, dispatcher.base_url(request))
        except Exception as exc:
            response = error_response(exc, request_id)
            metrics.record(route.name, path, "stream", response.status_code, started)
            return response

        async def frames() -> AsyncIterator[str]:
            status = 499  # the client went away before the end
            try:
                async for item in items:
                    yield sse_frame(item.to_json())
                status = 200
            except Exception as exc:  # after the 200: report in-band, then end the stream
                status, detail = to_http(exc)
                logger.error("stream %s failed", request_id, exc_info=exc)
                yield sse_frame({"type": "error", "status_code": status, "detail": detail,
                                 "request_id": request_id})
            finally:
                metrics.record(route.name, path, "stream", status, started)

        headers = {**SSE_HEADERS, BILLING_HEADER: format_units(units)}
        return EventStreamResponse(with_heartbeats(frames(), heartbeat_s), headers=headers)

    tag = route.name
    extension = {ENDPOINT_EXTENSION: endpoint_extension(dispatcher, route, spec)}
    for alias in ["", *owner_alias_prefixes(dispatcher)]:
        documented = not alias
        app.add_api_route(f"{alias}{path}", call, methods=["POST"], response_model=spec.output_model, tags=[tag],
                          dependencies=dependencies, include_in_schema=documented, responses=CALL_ERRORS,
                          openapi_extra=extension if documented else None,
                          summary=spec.summary, description=spec.description, name=f"{route.name}:{spec.method}{alias}")
        if not spec.stream:
            continue
        app.add_api_route(
            f"{alias}{path}/stream", stream, methods=["POST"], tags=[tag], include_in_schema=documented,
            name=f"{route.name}:{spec.method}:stream{alias}", dependencies=dependencies,
            response_model=stream_frame_model(spec.output_model), response_class=EventStreamResponse,
            responses=CALL_ERRORS, summary=f"{spec.summary} (stream)",
            description="Server-sent events: `data: {\"type\": \"progress\", ...}` frames (and the service's "
            "partial outputs) while the work runs, then one frame holding the same output as the sync endpoint. "
            "A failure before the first frame is a plain HTTP error; after it, an `error` frame ends the stream.",
        )
