"""WebSocket routes of realtime endpoints: the client's side of `serve_app.realtime`.

Frames are JSON text or msgpack binary, each an object. The ingress decodes them, forwards them to
the session's inbox on the replica, and encodes what the session sends the way the client last
spoke. A frame that is not an object gets an error frame (the socket stays open); a failed session
gets an error frame, then a close (1008 for the caller's errors, 1011 for ours).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import msgpack
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect, WebSocketState

from serve_app.auth import ApiKeyAuth
from serve_app.context import RequestInfo, cancel_call
from serve_app.endpoints import RealtimeSpec, ServiceRoute
from serve_app.errors import to_http, unwrap_remote_error
from serve_app.ingress.dispatcher import Dispatcher
from serve_app.realtime import Attach, Encoding

logger = logging.getLogger("ray.serve")
INBOX_CLOSE_GRACE_S = 10.0  # when the ingress closes a gone client's inbox entry itself (see `run_session`)


def _decode(frame: Mapping[str, Any]) -> tuple[Encoding, Any]:
    """`(the frame's encoding, its message)`; the message is None when the frame does not decode."""
    if frame.get("bytes") is not None:
        try:
            return "msgpack", msgpack.unpackb(frame["bytes"], raw=False)
        except Exception:
            return "msgpack", None
    try:
        return "json", json.loads(frame.get("text") or "")
    except ValueError:
        return "json", None


class _Client:
    """One WebSocket: sends in the client's encoding."""

    def __init__(self, websocket: WebSocket) -> None:
        self.ws = websocket
        self.encoding: Encoding = "json"
        self._lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._lock:
            if self.encoding == "msgpack":
                await self.ws.send_bytes(msgpack.packb(message, use_bin_type=True))
            else:
                await self.ws.send_text(json.dumps(message, separators=(",", ":")))

    async def close(self, code: int, reason: str = "") -> None:
        if self.ws.application_state != WebSocketState.DISCONNECTED:
            with contextlib.suppress(Exception):
                await self.ws.close(code=code, reason=reason[:120])


async def _client_to_inbox(client: _Client, inbox: Any, session_id: str) -> None:
    """Forward the client's messages until it disconnects."""
    while True:
        frame = await client.ws.receive()
        if frame["type"] == "websocket.disconnect":
            return
        encoding, message = _decode(frame)
        client.encoding = encoding  # answers (error frames included) go out as the client last spoke
        if not isinstance(message, dict):
            await client.send({"type": "error", "error": "invalid_message",
                               "detail": "each frame must be a JSON object (text) or a msgpack map (binary)"})
            continue
        inbox.put.remote(session_id, encoding, message)


async def run_session(websocket: WebSocket, route: ServiceRoute, spec: RealtimeSpec, base_url: str,
                      caller: Any = None) -> None:
    """Bridge one accepted WebSocket to a session on a service replica."""
    client = _Client(websocket)
    request_id = websocket.scope.get("state", {}).get("request_id") or uuid.uuid4().hex
    session_id = uuid.uuid4().hex
    info = RequestInfo(request_id, spec.route(route.prefix), base_url, caller)
    gen = route.handle.options(stream=True).realtime_session.remote(spec.method, session_id, info)
    inbox: Any = None
    reader: asyncio.Task[None] | None = None
    try:
        first = await gen.__anext__()
        if not isinstance(first, Attach):
            raise RuntimeError("realtime session did not attach")
        inbox = first.inbox
        reader = asyncio.ensure_future(_client_to_inbox(client, inbox, session_id))
        outgoing = asyncio.ensure_future(gen.__anext__())
        while True:
            done, _ = await asyncio.wait({reader, outgoing}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:  # the client went away: end the session
                outgoing.cancel()
                return
            try:
                message = outgoing.result()
            except StopAsyncIteration:
                await client.close(1000)
                return
            await client.send(message)
            outgoing = asyncio.ensure_future(gen.__anext__())
    except (WebSocketDisconnect, asyncio.CancelledError):
        raise
    except Exception as exc:
        status, detail = to_http(exc)
        cause = unwrap_remote_error(exc)
        error_type = getattr(cause, "error_type", "internal_error" if status >= 500 else "request_error")
        if status >= 500:
            logger.error("realtime session %s failed", request_id, exc_info=exc)
        with contextlib.suppress(Exception):
            await client.send({"type": "error", "error": error_type, "detail": detail, "request_id": request_id})
        await client.close(1011 if status >= 500 else 1008, str(detail) if isinstance(detail, str) else "")
    finally:
        if reader is not None:
            reader.cancel()
        # The client went away (or the session ended): cancel the session on its replica (Serve's
        # cancel, and a post on our board for when Serve loses it), which then closes its inbox entry
        # itself. Closing the inbox from here at once would race the cancel: a session reading its
        # messages would see them end and return as if the client had said goodbye. The late close
        # is only for a replica that never got the cancel (it died).
        cancel_call(gen, info)
        if inbox is not None:
            asyncio.get_running_loop().call_later(INBOX_CLOSE_GRACE_S, inbox.close.remote, session_id)


def add_realtime_routes(app: FastAPI, dispatcher: Dispatcher, route: ServiceRoute, spec: RealtimeSpec,
                        auth: ApiKeyAuth) -> None:
    """Mount a realtime endpoint: the WebSocket, plus a documented GET at the same path that tells
    plain HTTP clients to upgrade."""
    path = spec.route(route.prefix)

    async def websocket_route(websocket: WebSocket) -> None:
        try:
            auth.authenticate(websocket.headers.get("authorization", ""), websocket.query_params.get("fal_key"))
        except StarletteHTTPException as exc:
            await websocket.close(code=1008, reason=str(exc.detail))  # before accept: an HTTP 403
            return
        await websocket.accept()
        await run_session(websocket, route, spec, dispatcher.base_url(websocket), dispatcher.caller)

    async def describe() -> JSONResponse:
        return JSONResponse({"detail": f"{path} is a WebSocket endpoint: connect with ws:// or wss://."},
                            status_code=426, headers={"Upgrade": "websocket"})

    app.add_api_websocket_route(path, websocket_route, name=f"{route.name}:{spec.method}:ws")
    app.add_api_route(
        path, describe, methods=["GET"], tags=[route.name], name=f"{route.name}:{spec.method}",
        summary=f"{spec.summary} (WebSocket)",
        description=(spec.description + "\n\n" if spec.description else "") + "A WebSocket: JSON text frames "
        "or msgpack binary frames, each an object with a `type`; answers come in the encoding the client last "
        "used. API keys: `Authorization: Key <key>`, or `?fal_key=<key>` where a browser can't send headers. "
        "A plain GET answers 426.",
        responses={426: {"description": "Upgrade to a WebSocket"}},
    )
