"""The API's documentation: Swagger UI and ReDoc served from installed packages (no CDN), and the
OpenAPI document completed where FastAPI's own falls short.

- Integer fields bounded past what JavaScript holds exactly (64-bit seeds) get an example, so Swagger's
  "Try it out" body is valid.
- `/docs`: Swagger UI 5 (`swagger-ui-bundle-v2`; FastAPI's OpenAPI 3.1 needs Swagger UI 5), `/redoc`:
  ReDoc (the bundle `fastapi-offline` ships), their assets under `/_static/`.
- Stream routes document their SSE frames (`<Output>StreamFrame`: progress, partial, error or the
  output); the queue's result and status stream routes name the outputs and events they carry;
  `POST /files` documents its body (raw or multipart); the API key scheme (`Authorization: Key ...`)
  is declared, and required on the routes that check it, so Swagger shows Authorize.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, RootModel, create_model

from serve_app.io import Image

STATIC_PREFIX = "/_static"
SECURITY_SCHEME = "FalKey"
NO_FAVICON = "data:,"  # no icon request at all: the defaults point at a website
# The doc pages load nothing from elsewhere (ReDoc's bundle would fetch its logo from a CDN).
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'")
ENDPOINT_EXTENSION = "x-serve-app-endpoint"


class EventStreamResponse(StreamingResponse):
    """A `text/event-stream` response, so the OpenAPI document files the frame schema under it."""

    media_type = "text/event-stream"


class ProgressFrame(BaseModel):
    """`step` of `total` done, with an optional preview image."""

    type: Literal["progress"] = Field(description="Always `progress`.")
    step: int = Field(description="Units of work done.")
    total: int = Field(description="Units of work in all.")
    progress: float = Field(description="step / total, 0 to 1.")
    message: str = Field(description="What is being done, e.g. `denoising`.")
    preview: Image | None = Field(default=None, description="A preview of the result so far, when the service "
                                  "sends one.")


class PartialFrame(BaseModel):
    """A partial output (an audio chunk, a training status): `type` names it, the rest is its data."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": True})

    type: str = Field(description="The kind of partial output, e.g. `audio_chunk`, `training`.")


class ErrorFrame(BaseModel):
    """The last frame of a stream that failed after it started (before, the call is a plain HTTP error)."""

    type: Literal["error"] = Field(description="Always `error`.")
    status_code: int = Field(description="The HTTP status the failure maps to (e.g. 499 cancelled, 500).")
    detail: Any = Field(description="What went wrong, in fal's `detail` shape.")
    request_id: str = Field(description="The request's id.")


@functools.cache
def stream_frame_model(output_model: type[BaseModel]) -> type[BaseModel]:
    """The schema of one SSE frame of an endpoint's stream: an event, an error, or its final output
    (the last frame, the same JSON as the sync call)."""
    frame: Any = ProgressFrame | PartialFrame | ErrorFrame | output_model
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]
        f"{output_model.__name__}StreamFrame", __base__=RootModel[frame],  # type: ignore[valid-type]
        __doc__=f"One `data:` frame of the stream: progress, partial outputs, then the "
        f"{output_model.__name__} (or an error frame).",
    )
    return model


def _assets_dirs() -> tuple[Path, Path]:
    """Swagger UI's and ReDoc's static files, from their packages."""
    import fastapi_offline
    from swagger_ui_bundle import swagger_ui_path

    return Path(str(swagger_ui_path)), Path(fastapi_offline.__file__).parent / "static"


def add_docs_routes(app: FastAPI, title: str) -> None:
    """`/docs` and `/redoc`, with their assets served by the app itself."""
    swagger_dir, redoc_dir = _assets_dirs()
    app.mount(f"{STATIC_PREFIX}/swagger", StaticFiles(directory=swagger_dir), name="swagger-assets")
    app.mount(f"{STATIC_PREFIX}/redoc", StaticFiles(directory=redoc_dir), name="redoc-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        page = get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json", title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}{STATIC_PREFIX}/swagger/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_PREFIX}/swagger/swagger-ui.css",
            swagger_favicon_url=NO_FAVICON,
            swagger_ui_parameters={"persistAuthorization": True, "displayRequestDuration": True},
        )
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        page = get_redoc_html(openapi_url=f"{root}/openapi.json", title=f"{title} - ReDoc",
                              redoc_js_url=f"{root}{STATIC_PREFIX}/redoc/redoc.standalone.js",
                              redoc_favicon_url=NO_FAVICON, with_google_fonts=False)
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page


def _output_refs(paths: dict[str, Any]) -> list[dict[str, Any]]:
    """The output schemas of every endpoint (from their sync operations), without repeats."""
    refs: list[dict[str, Any]] = []
    for item in paths.values():
        op = item.get("post", {})
        if ENDPOINT_EXTENSION not in op:
            continue
        schema = op.get("responses", {}).get("200", {}).get("content", {}).get("application/json", {}).get("schema")
        if schema and schema not in refs:
            refs.append(schema)
    return refs


def _complete_queue(paths: dict[str, Any], prefix: str, outputs: list[dict[str, Any]]) -> None:
    result = paths.get(f"{prefix}/{{app_id}}/requests/{{request_id}}", {}).get("get")
    if result is not None and outputs:
        result["responses"].setdefault("200", {"description": "The output"})["content"] = {
            "application/json": {"schema": {"anyOf": outputs}}}
    stream = paths.get(f"{prefix}/{{app_id}}/requests/{{request_id}}/status/stream", {}).get("get")
    if stream is not None:
        event = {"anyOf": [{"$ref": "#/components/schemas/ProgressFrame"},
                           {"$ref": "#/components/schemas/PartialFrame"}],
                 "description": "IN_PROGRESS frames: one of the service's stream events."}
        stream["responses"]["200"]["content"] = {"text/event-stream": {"schema": {
            "allOf": [{"$ref": "#/components/schemas/QueueStatus"},
                      {"type": "object", "properties": {"event": event}}]}}}


def _complete_upload(paths: dict[str, Any]) -> None:
    upload = paths.get("/files", {}).get("post")
    if upload is None or "requestBody" in upload:
        return
    binary = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
    upload["requestBody"] = {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {**binary, "description": "The file."}}}},
        "application/octet-stream": {"schema": {**binary, "description": "The file as the raw body; name it "
                                                "with `?file_name=` and send its real `content-type`."}},
    }}


def _complete_streams(schema: dict[str, Any], streams: dict[str, str]) -> None:
    """Point each stream route's `text/event-stream` body at its frame model (FastAPI documents a
    non-JSON response as a plain string)."""
    names = list(schema.get("components", {}).get("schemas", {}))
    for path, model_name in streams.items():
        op = schema["paths"].get(path, {}).get("post")
        key = next((n for n in names if n == model_name), None) or next(
            (n for n in names if n.endswith(f"__{model_name}")), None)
        if op is None or key is None:
            continue
        op["responses"]["200"]["content"] = {"text/event-stream": {"schema": {
            "$ref": f"#/components/schemas/{key}",
            "description": "Each `data:` frame holds one of these JSON values; the last one is the output."}}}


JS_SAFE_INTEGER = 2**53 - 1


def _safe_examples(schemas: dict[str, Any]) -> None:
    """Give integer fields whose bounds a browser can't hold (64-bit seeds) an example, when they have
    none: Swagger's sampler would otherwise pre-fill the bound rounded to a double, past the bound."""
    for model in schemas.values():
        for prop in model.get("properties", {}).values():
            if "examples" in prop or "example" in prop:
                continue
            for variant in [prop, *prop.get("anyOf", [])]:
                if variant.get("type") == "integer" and variant.get("maximum", 0) > JS_SAFE_INTEGER:
                    prop["examples"] = [max(variant.get("minimum", 0), min(42, variant["maximum"]))]


def complete_openapi(schema: dict[str, Any], queue_prefix: str | None, secured: set[tuple[str, str]],
                     streams: dict[str, str] | None = None) -> dict[str, Any]:
    """Fill in what FastAPI can't infer: stream frames, queue outputs and events, the upload body,
    API keys.

    Args:
        schema: the generated OpenAPI document (changed in place and returned).
        queue_prefix: where the queue routes live, or None without a queue.
        secured: `(path, method)` of the operations that check the API key.
        streams: stream route path -> name of its frame model.
    """
    paths: dict[str, Any] = schema.setdefault("paths", {})
    _complete_streams(schema, streams or {})
    _safe_examples(schema.get("components", {}).get("schemas", {}))
    if queue_prefix is not None:
        _complete_queue(paths, queue_prefix, _output_refs(paths))
    _complete_upload(paths)
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
        "type": "apiKey", "in": "header", "name": "Authorization",
        "description": "`Key <your key>`: the header fal_client sends from `FAL_KEY`. Needed when the server "
        "sets `ingress.api_key_env`.",
    }
    for path, method in secured:
        op = paths.get(path, {}).get(method)
        if op is not None:
            op["security"] = [{SECURITY_SCHEME: []}]
    return schema


def secured_operations(app: FastAPI, guard: Callable[..., Any]) -> set[tuple[str, str]]:
    """`(path, method)` of every documented route whose dependencies include `guard` (or a method of it)."""
    found: set[tuple[str, str]] = set()
    for route in app.routes:
        if not isinstance(route, APIRoute) or not route.include_in_schema:
            continue
        stack, uses = list(route.dependant.dependencies), False
        while stack and not uses:
            dep = stack.pop()
            uses = dep.call is guard or getattr(dep.call, "__self__", None) is guard  # or one of its methods
            stack.extend(dep.dependencies)
        if uses:
            found.update((route.path_format, m.lower()) for m in route.methods or ())
    return found


def stream_routes(app: FastAPI) -> dict[str, str]:
    """Documented stream routes: path -> the name of their frame model."""
    return {r.path_format: r.response_model.__name__ for r in app.routes
            if isinstance(r, APIRoute) and r.include_in_schema and r.response_model is not None
            and r.response_class is EventStreamResponse}


def install_openapi(app: FastAPI, queue_prefix: str | None, guard: Callable[..., Any] | None) -> None:
    """Make `app.openapi()` return the completed document (built once, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            secured = secured_operations(app, guard) if guard is not None else set()
            app.openapi_schema = complete_openapi(schema, queue_prefix, secured, stream_routes(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
