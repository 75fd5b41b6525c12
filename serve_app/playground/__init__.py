"""The playground: one page, served by the ingress at `/playground/`, with a form per endpoint built
in the browser from `/openapi.json` (fal's `ui` hints, enums as selects, bounds, image sizes as a
preset or dimensions, lists such as `loras`, file fields with upload). A run goes through the queue:
live progress and previews from the status stream, then the output rendered by its content type
(image, audio, video, download), with the same request as curl and as fal-client code.

Static files only (`static/`): no CDN, no build step.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"
ROUTE = "/playground"


def add_playground_routes(app: FastAPI) -> None:
    """Serve the page at `/playground/` (and redirect `/playground` there)."""

    @app.get(ROUTE, include_in_schema=False)
    async def playground(request: Request) -> RedirectResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(f"{root}{ROUTE}/", status_code=307)

    app.mount(ROUTE, StaticFiles(directory=STATIC_DIR, html=True), name="playground")
