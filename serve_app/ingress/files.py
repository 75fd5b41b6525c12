"""`/files`: downloads from the local output store, and input uploads into the app's store."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.auth import ApiKeyAuth
from serve_app.errors import FieldError
from serve_app.http import error_response
from serve_app.ingress.dispatcher import Dispatcher
from serve_app.io import File
from serve_app.storage import FILES_ROUTE, LocalStore, content_disposition, content_type_for, materialize

# Served with every stored file: no type sniffing, and no script or subresource runs even if a
# browser renders one (uploads are user content on the API's own origin).
FILE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; img-src 'self'; media-src 'self'; sandbox",
    "Cross-Origin-Resource-Policy": "cross-origin",
}


def add_file_routes(app: FastAPI, dispatcher: Dispatcher, auth: ApiKeyAuth) -> None:
    """`GET /files/<key>` for the local store; `POST /files` uploads when enabled."""
    store = dispatcher.store
    if isinstance(store, LocalStore):

        @app.get(FILES_ROUTE + "/{key:path}", tags=["files"], summary="Download a stored file",
                 response_class=FileResponse,
                 responses={200: {"content": {"application/octet-stream": {}},
                                  "description": "The file, with Content-Disposition (attachment unless media)"},
                            404: {"description": "No such file"}})
        async def get_file(key: str) -> FileResponse:
            path = store.path_for(key)
            if path is None:
                raise StarletteHTTPException(404, "File not found")
            name = key.rsplit("/", 1)[-1]
            content_type = content_type_for(None, name)
            headers = {**FILE_HEADERS, "Content-Disposition": content_disposition(content_type, name)}
            return FileResponse(path, media_type=content_type, headers=headers)

    if dispatcher.settings.max_upload_bytes > 0:
        _add_upload_route(app, dispatcher, [Depends(auth)] if auth.enabled else [])


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


def _add_upload_route(app: FastAPI, dispatcher: Dispatcher, dependencies: list[Any]) -> None:
    """`POST /files`: store an input file (the raw request body, or a multipart form's `file` part)
    in the app's output store and answer its File JSON, whose `url` can then be given to any input
    field that takes a file URL."""
    limit = dispatcher.settings.max_upload_bytes
    store = dispatcher.store

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
        uploaded = File.from_bytes(data, content_type.split(";")[0].strip(), file_name or "upload")
        await materialize(uploaded, store, dispatcher.base_url(request))
        return JSONResponse(uploaded.model_dump(mode="json"))

    app.add_api_route(
        FILES_ROUTE, upload, methods=["POST"], tags=["files"], dependencies=dependencies, response_model=File,
        summary="Upload an input file",
        description=f"Send the file as the raw request body (`curl --data-binary @data.zip -H 'content-type: "
        f"application/zip' '.../files?file_name=data.zip'`) or as the `file` part of a multipart form "
        f"(`curl -F file=@data.zip`), at most {limit} bytes. The answer's `url` can be given to any input "
        "field that takes a file URL. Files are swept like outputs.",
        responses={413: {"description": "Larger than the upload limit"}},
    )
