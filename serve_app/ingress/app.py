"""The FastAPI app of the ingress, assembled from its parts (one concept per module)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.auth import ApiKeyAuth, api_keys_from_env
from serve_app.errors import _validation_detail
from serve_app.http import BILLING_HEADER
from serve_app.ingress.dispatcher import Dispatcher
from serve_app.ingress.docs import add_docs_routes, install_openapi
from serve_app.ingress.files import add_file_routes
from serve_app.ingress.middleware import RequestIdMiddleware
from serve_app.ingress.pages import add_page_routes
from serve_app.ingress.realtime_routes import add_realtime_routes
from serve_app.ingress.routes import add_endpoint_routes
from serve_app.metrics import RequestMetrics, add_metrics_route
from serve_app.playground import add_playground_routes

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


def create_app(dispatcher: Dispatcher, ready: Readiness | None = None) -> FastAPI:
    """Build the FastAPI app: sync, stream and realtime routes per declared endpoint, the queue,
    files, the ops routes (/health, /ready, /metrics), the docs (offline) and the playground."""
    settings = dispatcher.settings
    app = FastAPI(title=settings.title, version="0.1.0", docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if settings.docs else None)
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
    dependencies = [Depends(auth)] if auth.enabled else []
    request_metrics = RequestMetrics()
    for route in dispatcher.routes:
        for spec in route.endpoints:
            add_endpoint_routes(app, dispatcher, route, spec, dependencies, request_metrics)
        for rt in route.realtime:
            add_realtime_routes(app, dispatcher, route, rt, auth)
        add_page_routes(app, route)

    @app.get("/health", tags=["ops"], summary="Liveness: the ingress answers")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["ops"], summary="Readiness: every service deployment is healthy")
    async def ready_route() -> JSONResponse:
        ok, details = await ready() if ready is not None else (True, {})
        return JSONResponse({"status": "ready" if ok else "not_ready", "services": details},
                            status_code=200 if ok else 503)

    if settings.queue.enabled:
        from serve_app.queue.routes import install_queue_routes

        install_queue_routes(app, dispatcher, settings.queue, auth=auth)
    add_file_routes(app, dispatcher, auth)
    if settings.metrics.enabled:
        add_metrics_route(app, [r.name for r in dispatcher.routes], settings.metrics, settings.queue.enabled)
    if settings.docs:
        add_docs_routes(app, settings.title)
        install_openapi(app, settings.queue.route_prefix if settings.queue.enabled else None,
                        auth if auth.enabled else None)
    if settings.playground:
        add_playground_routes(app)
    return app
