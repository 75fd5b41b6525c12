"""Request ids and fal's default headers on every HTTP response, and the input guard at the edge:
body size (413), invalid Unicode and loosely typed values (422 naming the field)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.errors import _validation_detail
from serve_app.http import BILLING_HEADER, REQUEST_ID_HEADER, error_response
from serve_app.tracing import bind_request_id

_INCOMING_ID_HEADERS = (b"x-fal-request-id", b"x-request-id")


def serve_request_id() -> str:
    """The id Serve's proxy gave this HTTP request (the caller's `x-request-id` when sent)."""
    try:
        from ray.serve.context import _get_serve_request_context

        return str(_get_serve_request_context().request_id or "")
    except Exception:  # outside a replica
        return ""


class RequestIdMiddleware:
    """Give every request an id (the caller's `x-fal-request-id`, else Serve's request id, which
    is the caller's `x-request-id` when sent) and stamp `x-fal-request-id` and a default
    `x-fal-billable-units: 0` on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = next((headers[h] for h in _INCOMING_ID_HEADERS if h in headers), b"")
        request_id = incoming.decode("latin-1")[:128] if incoming else (serve_request_id() or uuid.uuid4().hex)
        scope.setdefault("state", {})["request_id"] = request_id
        bind_request_id(request_id, scope.get("path", ""))  # logs here and in the replicas name it
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
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


# `\ud800`-`\udfff` escapes in a JSON text: only then can a string hold a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_BODY_METHODS = ("POST", "PUT", "PATCH")


def lone_surrogate_path(value: Any, path: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    """Where in decoded JSON a string (or key) holds a lone surrogate, which no UTF-8 encoder can
    write (and so fails deep in a tokenizer or the response encoder), else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = lone_surrogate_path(key, (*path, key)) or lone_surrogate_path(item, (*path, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = lone_surrogate_path(item, (*path, index))
            if found is not None:
                return found
    return None


def check_body(model: type[BaseModel], body: bytes) -> list[dict[str, Any]] | None:
    """fal-shaped 422 details for a JSON body the input model must refuse at the edge, else None:
    strings that are not valid Unicode, and values FastAPI's lax validation would coerce (`false`
    for a number, `1.5` for an integer, `"true"` for a boolean: strict JSON types)."""
    if _SURROGATE_ESCAPE.search(body):
        try:
            decoded = json.loads(body)
        except ValueError:
            return None  # not JSON: FastAPI answers its own 422
        path = lone_surrogate_path(decoded)
        if path is not None:
            return [{"loc": ["body", *path], "msg": "invalid Unicode: a lone surrogate (not UTF-8 encodable)",
                     "type": "unicode_error"}]
    try:
        model.model_validate_json(body, strict=True)
    except ValidationError as strict_error:
        try:
            model.model_validate_json(body)
        except ValidationError:
            return None  # wrong in any mode: FastAPI's own validation answers
        return _validation_detail(strict_error.errors(include_url=False), ("body",))
    return None


class InputGuardMiddleware:
    """Checks request bodies before they reach a route: larger than `max_body_bytes` is a 413
    (declared or counted while reading), and a route's JSON input goes through `check_body`.
    Routes whose bodies are not JSON inputs (`POST /files`) keep their own limits."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, max_body_bytes: int) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.max_body_bytes = max_body_bytes
        self._routes: list[tuple[APIRoute, type[BaseModel]]] | None = None

    def _model_for(self, scope: Scope) -> type[BaseModel] | None:
        if self._routes is None:  # every route exists by the first request
            self._routes = []
            for route in self.fastapi_app.routes:
                field = getattr(route, "body_field", None)
                model = getattr(getattr(field, "field_info", None), "annotation", None)
                if isinstance(route, APIRoute) and isinstance(model, type) and issubclass(model, BaseModel):
                    self._routes.append((route, model))
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        for route, model in self._routes:
            if scope.get("method") in (route.methods or ()) and route.path_regex.match(path):
                return model
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        model = self._model_for(scope)
        if model is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
        detail = check_body(model, bytes(body))
        if detail is not None:
            await _json(422, {"detail": detail}, scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = (f"The request body is larger than the limit of {self.max_body_bytes} bytes; send large files "
                  "as URLs (POST /files uploads one).")
        await _json(413, {"detail": detail}, scope, receive, send)


async def _json(status: int, body: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
    from fastapi.responses import JSONResponse

    request_id = serve_request_id() or uuid.uuid4().hex
    response = JSONResponse({**body, "request_id": request_id}, status_code=status,
                            headers={BILLING_HEADER: "0", REQUEST_ID_HEADER: request_id})
    await response(scope, receive, send)


def install_input_guard(app: FastAPI, max_body_bytes: int) -> None:
    """Put the input guard in front of every route of `app` (call once its routes exist or will)."""
    app.add_middleware(InputGuardMiddleware, fastapi_app=app, max_body_bytes=max_body_bytes)
