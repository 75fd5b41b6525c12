"""The HTTP front door: a FastAPI app whose routes come from the services' endpoint specs.

For every endpoint `E` of a service mounted at `/name`: `POST /name<E.path>` (sync JSON) and
`POST /name<E.path>/stream` (SSE). Plus `/files/<key>` (the local output store), `/health`,
`/ready`, `/docs` and `/openapi.json`. The ingress deployment talks to the services only through
their deployment handles, and exposes the same calls to Python (`run`, `stream`).
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.auth import ApiKeyAuth, api_keys_from_env
from serve_app.endpoints import EndpointSpec
from serve_app.errors import FieldError, _validation_detail, to_http
from serve_app.io import File
from serve_app.queue.settings import QueueSettings
from serve_app.service import RequestInfo
from serve_app.storage import FILES_ROUTE, LocalStore, StorageConfig, make_store, materialize
from serve_app.streaming import SSE_HEADERS, Partial, Progress, sse_frame, with_heartbeats

logger = logging.getLogger("ray.serve")

BILLING_HEADER = "x-fal-billable-units"
# Serve's proxy already answers with `x-request-id` (its own id, or the caller's); ours is fal's.
REQUEST_ID_HEADER = "x-fal-request-id"
_INCOMING_ID_HEADERS = (b"x-fal-request-id", b"x-request-id")


def _serve_request_id() -> str:
    """The id Serve's proxy gave this HTTP request (the caller's `x-request-id` when sent)."""
    try:
        from ray.serve.context import _get_serve_request_context

        return str(_get_serve_request_context().request_id or "")
    except Exception:  # outside a replica
        return ""


class IngressSettings(BaseModel):
    """Options of the HTTP front door."""

    model_config = ConfigDict(extra="forbid")

    public_url: str | None = Field(
        default=None,
        description="Base URL for file links; default: the URL the request came in on "
        "(Python handle calls fall back to http://127.0.0.1:8000).",
    )
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Where outputs are stored.")
    heartbeat_s: float = Field(default=10.0, gt=0, description="Seconds between SSE heartbeats when idle.")
    title: str = Field(default="Generative model services", description="Title of the OpenAPI document.")
    queue: QueueSettings = Field(default_factory=QueueSettings, description="The fal-compatible queue API.")
    api_key_env: list[str] = Field(
        default_factory=list,
        description="Names of environment variables holding accepted API keys (comma-separated values "
        "allowed); when any is set, every model route (sync, stream, queue) requires "
        "`Authorization: Key <key>`.",
    )
    max_upload_bytes: int = Field(
        default=512 * 1024 * 1024,
        ge=0,
        description="Largest file `POST /files` accepts (input files such as training ZIPs; local store only); "
        "0 turns uploads off.",
    )


@dataclass
class ServiceRoute:
    """A mounted service: its URL prefix, handle and declared endpoints."""

    name: str
    prefix: str
    handle: Any  # DeploymentHandle
    endpoints: list[EndpointSpec] = field(default_factory=list)


def format_units(units: float) -> str:
    return str(int(units)) if float(units).is_integer() else f"{units:g}"


def error_response(exc: BaseException, request_id: str) -> JSONResponse:
    """The JSON error response for any exception (see `errors.to_http`)."""
    status, detail = to_http(exc)
    if status >= 500:
        logger.error("request %s failed", request_id, exc_info=exc)
    return JSONResponse(
        {"detail": detail, "request_id": request_id},
        status_code=status,
        headers={BILLING_HEADER: "0", REQUEST_ID_HEADER: request_id},
    )


class RequestIdMiddleware:
    """Give every request an id (the caller's `x-fal-request-id`, else Serve's request id, which
    is the caller's `x-request-id` when sent) and stamp `x-fal-request-id` and a default
    `x-fal-billable-units: 0` on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = next((headers[h] for h in _INCOMING_ID_HEADERS if h in headers), b"")
        request_id = incoming.decode("latin-1")[:128] if incoming else (_serve_request_id() or uuid.uuid4().hex)
        scope.setdefault("state", {})["request_id"] = request_id
        started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                raw = list(message.get("headers", []))
                names = {k.lower() for k, _ in raw}
                if REQUEST_ID_HEADER.encode() not in names:
                    raw.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                if BILLING_HEADER.encode() not in names:
                    raw.append((BILLING_HEADER.encode(), b"0"))
                message = {**message, "headers": raw}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:  # last line of defence: never a bare traceback page
            if started:
                raise
            await error_response(exc, request_id)(scope, receive, send)


def _billing_counter() -> Any:
    """A Ray Serve metric (Prometheus `ray_serve_app_billable_units_total`), or None outside Ray."""
    try:
        from ray.serve.metrics import Counter

        return Counter("serve_app_billable_units", description="Billable units of completed requests.",
                       tag_keys=("service", "endpoint"))  # type: ignore[arg-type]
    except Exception:  # no Ray worker here (unit tests): nothing to export to
        return None


class Dispatcher:
    """Runs endpoint calls against service handles and turns outputs into JSON with file URLs."""

    def __init__(self, routes: list[ServiceRoute], settings: IngressSettings) -> None:
        self.routes = routes
        self.settings = settings
        self.store = make_store(settings.storage)
        self.by_path: dict[str, tuple[ServiceRoute, EndpointSpec]] = {
            spec.route(route.prefix): (route, spec) for route in routes for spec in route.endpoints
        }
        self._billed = _billing_counter()

    def _bill(self, route: ServiceRoute, spec: EndpointSpec, units: float) -> float:
        """Count units billed for a completed call (the `x-fal-billable-units` metric)."""
        if self._billed is not None:
            self._billed.inc(units, tags={"service": route.name, "endpoint": spec.route(route.prefix)})
        return units

    def lookup(self, path: str) -> tuple[ServiceRoute, EndpointSpec]:
        """The service and endpoint behind a sync path such as `/sana/sprint`."""
        key = "/" + path.strip("/")
        if key not in self.by_path:
            raise StarletteHTTPException(404, f"Path {key} not found")
        return self.by_path[key]

    def base_url(self, request: Request | None) -> str:
        if self.settings.public_url:
            return self.settings.public_url
        return str(request.base_url) if request is not None else "http://127.0.0.1:8000/"

    async def _jsonable(self, item: Any, base_url: str) -> dict[str, Any]:
        if isinstance(item, Progress):
            if item.preview is not None:
                await materialize(item.preview, self.store, base_url)
            return item.to_json()
        if isinstance(item, Partial):
            await materialize(item.data, self.store, base_url)
            return item.to_json()
        await materialize(item, self.store, base_url)
        return item.model_dump(mode="json")

    async def run(self, path: str, body: BaseModel | dict[str, Any], request_id: str,
                  base_url: str) -> tuple[dict[str, Any], float]:
        """Call an endpoint to completion; returns `(output JSON, billable units)`."""
        route, spec = self.lookup(path)
        payload = body if isinstance(body, spec.input_model) else spec.input_model.model_validate(body)
        info = RequestInfo(request_id, spec.route(route.prefix))
        output = await route.handle.call_endpoint.remote(spec.method, payload, info)
        result = await self._jsonable(output, base_url)
        return result, self._bill(route, spec, spec.billable_units(payload))

    async def stream(self, path: str, body: BaseModel | dict[str, Any], request_id: str,
                     base_url: str) -> tuple[AsyncIterator[dict[str, Any]], float]:
        """Start a streaming call. The first event is awaited here, so a failure before any
        output raises (and becomes a real HTTP error) instead of hiding inside a 200 stream."""
        route, spec = self.lookup(path)
        payload = body if isinstance(body, spec.input_model) else spec.input_model.model_validate(body)
        info = RequestInfo(request_id, spec.route(route.prefix))
        gen = route.handle.options(stream=True).stream_endpoint.remote(spec.method, payload, info)
        first = await gen.__anext__()

        async def events() -> AsyncIterator[dict[str, Any]]:
            item = first
            exhausted = False
            try:
                while True:
                    yield await self._jsonable(item, base_url)
                    try:
                        item = await gen.__anext__()
                    except StopAsyncIteration:
                        exhausted = True
                        self._bill(route, spec, spec.billable_units(payload))
                        return
            finally:
                if not exhausted:  # closed or cancelled early: stop the service's work too
                    gen.cancel()

        return events(), spec.billable_units(payload)


def create_app(dispatcher: Dispatcher, ready: Any = None) -> FastAPI:
    """Build the FastAPI app: one sync and one stream route per declared endpoint."""
    settings = dispatcher.settings
    app = FastAPI(title=settings.title, version="0.1.0")
    app.add_middleware(RequestIdMiddleware)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_detail(list(exc.errors()), ())}, status_code=422,
                            headers={BILLING_HEADER: "0"})

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"Path {request.url.path} not found"
        headers = {**(exc.headers or {}), BILLING_HEADER: "0"}  # e.g. WWW-Authenticate on a 401
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)

    auth = ApiKeyAuth(api_keys_from_env(settings.api_key_env))
    for route in dispatcher.routes:
        for spec in route.endpoints:
            _add_endpoint_routes(app, dispatcher, route, spec, [Depends(auth)] if auth.enabled else [])

    @app.get("/health", tags=["ops"], summary="Liveness: the ingress answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"], summary="Readiness: every service deployment is healthy")
    async def ready_route() -> JSONResponse:
        ok, details = await ready() if ready is not None else (True, {})
        return JSONResponse({"status": "ready" if ok else "not_ready", "services": details},
                            status_code=200 if ok else 503)

    if settings.queue.enabled:
        from serve_app.queue.routes import install_queue_routes  # imports this module

        install_queue_routes(app, dispatcher, settings.queue, auth=auth)

    store = dispatcher.store
    if isinstance(store, LocalStore):

        @app.get(FILES_ROUTE + "/{key}", tags=["files"], summary="Download a generated file")
        async def get_file(key: str) -> FileResponse:
            path = store.path_for(key)
            if path is None:
                raise StarletteHTTPException(404, f"File {key} not found")
            return FileResponse(path)

        if settings.max_upload_bytes > 0:
            _add_upload_route(app, dispatcher, store, [Depends(auth)] if auth.enabled else [])

    return app


def _multipart_file(body: bytes, content_type: str) -> tuple[bytes, str, str | None]:
    """`(data, content type, file name)` of the `file` part of a multipart/form-data body (else of
    its first part that carries a file name)."""
    import email
    import email.policy

    message = email.message_from_bytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body,
                                       policy=email.policy.HTTP)
    parts = [p for p in message.iter_parts() if p.get_content_disposition() == "form-data"]
    part = next((p for p in parts if p.get_param("name", header="content-disposition") == "file"), None) \
        or next((p for p in parts if p.get_filename()), None)
    if part is None:
        raise FieldError("file", "the form has no `file` part", type="missing")
    data = part.get_payload(decode=True)
    return (data if isinstance(data, bytes) else b""), part.get_content_type(), part.get_filename()


def _add_upload_route(app: FastAPI, dispatcher: Dispatcher, store: LocalStore, dependencies: list[Any]) -> None:
    """`POST /files`: store an input file (the raw request body, or a multipart form's `file` part)
    in the local store and answer its File JSON, whose `url` can then be given to any input field
    that takes a file URL."""
    limit = dispatcher.settings.max_upload_bytes

    async def receive(request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        too_large = StarletteHTTPException(413, f"The upload is larger than the limit of {limit} bytes.")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)

    async def upload(request: Request, file_name: str | None = None) -> JSONResponse:
        content_type = request.headers.get("content-type", "application/octet-stream")
        try:
            data = await receive(request)
            if content_type.lower().startswith("multipart/form-data"):
                data, content_type, part_name = await asyncio.to_thread(_multipart_file, data, content_type)
                file_name = file_name or part_name
            if not data:
                raise FieldError("file", "the upload is empty", type="missing")
        except (FieldError, StarletteHTTPException) as exc:
            return error_response(exc, request.state.request_id)
        content_type = content_type.split(";")[0].strip() or "application/octet-stream"
        file_name = PurePosixPath((file_name or "").replace("\\", "/")).name or None
        url = await store.put(data, content_type, file_name, dispatcher.base_url(request))
        uploaded = File(url=url, content_type=content_type, file_name=file_name or url.rsplit("/", 1)[-1],
                        file_size=len(data))
        return JSONResponse(uploaded.model_dump(mode="json"))

    app.add_api_route(
        FILES_ROUTE, upload, methods=["POST"], tags=["files"], dependencies=dependencies, response_model=File,
        summary="Upload an input file",
        description=f"Send the file as the raw request body (`curl --data-binary @data.zip -H 'content-type: "
        f"application/zip' '.../files?file_name=data.zip'`) or as the `file` part of a multipart form "
        f"(`curl -F file=@data.zip`), at most {limit} bytes. The answer's `url` can be given to any input "
        "field that takes a file URL (e.g. `images_data_url`). Files are swept like outputs.",
        responses={413: {"description": "Larger than the upload limit"}},
    )


def _add_endpoint_routes(app: FastAPI, dispatcher: Dispatcher, route: ServiceRoute, spec: EndpointSpec,
                         dependencies: list[Any]) -> None:
    path = spec.route(route.prefix)
    input_model = spec.input_model
    heartbeat_s = dispatcher.settings.heartbeat_s

    async def call(request: Request, body: Annotated[input_model, Body()]) -> JSONResponse:  # type: ignore[valid-type]
        request_id = request.state.request_id
        try:
            output, units = await dispatcher.run(path, body, request_id, dispatcher.base_url(request))
        except Exception as exc:
            return error_response(exc, request_id)
        return JSONResponse(output, headers={BILLING_HEADER: format_units(units)})

    async def stream(request: Request, body: Annotated[input_model, Body()]) -> Any:  # type: ignore[valid-type]
        request_id = request.state.request_id
        try:
            events, units = await dispatcher.stream(path, body, request_id, dispatcher.base_url(request))
        except Exception as exc:
            return error_response(exc, request_id)

        async def frames() -> AsyncIterator[str]:
            try:
                async for event in events:
                    yield sse_frame(event)
            except Exception as exc:  # after the 200: report in-band, then end the stream
                status, detail = to_http(exc)
                logger.error("stream %s failed", request_id, exc_info=exc)
                yield sse_frame({"type": "error", "status_code": status, "detail": detail,
                                 "request_id": request_id})

        headers = {**SSE_HEADERS, BILLING_HEADER: format_units(units)}
        return StreamingResponse(with_heartbeats(frames(), heartbeat_s), media_type="text/event-stream",
                                 headers=headers)

    tag = route.name
    app.add_api_route(path, call, methods=["POST"], response_model=spec.output_model, tags=[tag],
                      dependencies=dependencies,
                      summary=spec.summary, description=spec.description, name=f"{route.name}:{spec.method}")
    if spec.stream:
        app.add_api_route(
            f"{path}/stream", stream, methods=["POST"], tags=[tag], name=f"{route.name}:{spec.method}:stream",
            dependencies=dependencies,
            summary=f"{spec.summary} (stream)",
            description="Server-sent events: `data: {\"type\": \"progress\", ...}` frames while the work runs, "
            "then one frame holding the same output as the sync endpoint.",
            responses={200: {"content": {"text/event-stream": {}}, "description": "SSE stream"}},
        )


@serve.ingress()
class Ingress:
    """The ingress deployment. Bound by `build_app` with the services' handles."""

    def __init__(self, routes: list[ServiceRoute], settings: IngressSettings) -> None:
        self.dispatcher = Dispatcher(routes, settings)
        self._started = time.time()

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.dispatcher, ready=self.readiness)

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Whether every deployment of this application is healthy, per Serve's controller."""
        try:
            app_name = serve.get_replica_context().app_name
            status = serve.status().applications[app_name]
        except Exception as exc:  # no controller answer: not ready
            return False, {"error": type(exc).__name__}
        details = {name: str(d.status.value if hasattr(d.status, "value") else d.status)
                   for name, d in status.deployments.items()}
        ok = all(v == "HEALTHY" for v in details.values())
        return ok, details

    async def run(self, path: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """Python API, like `fal_client.run`: call `path` (e.g. "/sana") and return its output JSON."""
        output, _ = await self.dispatcher.run(path, arguments, uuid.uuid4().hex, self.dispatcher.base_url(None))
        return output

    async def stream(self, path: str, arguments: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Python API, like `fal_client.stream`: progress events, then the output JSON."""
        events, _ = await self.dispatcher.stream(path, arguments, uuid.uuid4().hex,
                                                 self.dispatcher.base_url(None))
        async for event in events:
            yield event
