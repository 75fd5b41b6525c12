"""A service's own web page (e.g. a realtime demo's webcam page), served under its prefix.

A service class may set `static_dir` (a directory with an `index.html`): the ingress then answers
`GET /<service>/` with the page and `GET /<service>/static/<file>` with the files beside it, or else
with the framework's files every page may load from there (`static/realtime.js`: fal's realtime
WebRTC signalling, `serve_app/webrtc/static/`). Relative to the page, so they work under any prefix.
Explicit GET routes, not a mount: a mount at the prefix would also catch the service's WebSocket and
API paths.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.endpoints import ServiceRoute

NO_CACHE = {"Cache-Control": "no-cache"}
SHARED_DIRS = (Path(__file__).resolve().parents[1] / "webrtc" / "static",)  # after the service's own files


def add_page_routes(app: FastAPI, route: ServiceRoute) -> None:
    """Mount `GET {prefix}/` (index.html) and `GET {prefix}/static/{name}` for `route.page_dir`."""
    if route.page_dir is None:
        return
    root = Path(route.page_dir).resolve()
    index = root / "index.html"
    if not index.is_file():
        raise ValueError(f"service {route.name}'s static_dir {root} has no index.html")

    async def page() -> FileResponse:
        return FileResponse(index, media_type="text/html; charset=utf-8", headers=NO_CACHE)

    async def static(name: str) -> FileResponse:
        for directory in (root, *SHARED_DIRS):
            path = (directory / name).resolve()
            if directory in path.parents and path.is_file():
                return FileResponse(path, headers=NO_CACHE)
        raise StarletteHTTPException(404, f"File {name} not found")

    app.add_api_route(f"{route.prefix}/", page, methods=["GET"], tags=[route.name], name=f"{route.name}:page",
                      summary=f"The {route.name} page", response_class=FileResponse)
    app.add_api_route(f"{route.prefix}/static/{{name:path}}", static, methods=["GET"], include_in_schema=False,
                      name=f"{route.name}:static")
