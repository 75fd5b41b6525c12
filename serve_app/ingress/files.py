"""`/files`: downloads from the local output store, and input uploads into the app's store."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
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


class _FormSink:
    """Streams a multipart/form-data body to disk with python-multipart's parser: the `file` part
    (else the first part that carries a file name) goes to a temporary file, chunk by chunk; other
    parts are dropped. Nothing the size of the upload is ever held in memory."""

    def __init__(self, boundary: bytes, directory: Path | None) -> None:
        from python_multipart.multipart import MultipartParser

        self.directory = directory
        self.chosen: tuple[Path, str, str | None] | None = None  # (path, content type, file name)
        self.chosen_is_file_field = False
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._out: Any = None  # the open temporary file of the part being written, if kept
        self._path: Path | None = None
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self._add("_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._add("_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        })

    def _add(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)

    def _part_begin(self) -> None:
        self._headers, self._field, self._value = {}, b"", b""

    def _header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        kind, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        filename = params.get(b"filename")
        wanted = kind == b"form-data" and ((name == "file" and not self.chosen_is_file_field)
                                           or (filename is not None and self.chosen is None))
        if not wanted:
            return
        fd, path = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=self.directory)
        self._out, self._path = os.fdopen(fd, "wb"), Path(path)
        content_type = self._headers.get(b"content-type", b"application/octet-stream").decode("latin-1")
        if self.chosen is not None:  # a `file` field wins over an earlier part with a file name
            self.chosen[0].unlink(missing_ok=True)
        self.chosen = (self._path, content_type, filename.decode("utf-8", "replace") if filename else None)
        self.chosen_is_file_field = name == "file"

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._out is not None:
            self._out.write(data[start:end])

    def _part_end(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def write(self, chunk: bytes) -> None:
        self.parser.write(chunk)

    def finish(self) -> tuple[Path, str, str | None]:
        self.parser.finalize()
        self.close()
        if self.chosen is None:
            raise FieldError("file", "the form has no `file` part", type="missing")
        return self.chosen

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def _add_upload_route(app: FastAPI, dispatcher: Dispatcher, dependencies: list[Any]) -> None:
    """`POST /files`: store an input file (the raw request body, or a multipart form's `file` part)
    in the app's output store and answer its File JSON, whose `url` can then be given to any input
    field that takes a file URL. The body is streamed to a temporary file as it arrives (in the local
    store's own directory, so storing it is a rename), never held in memory."""
    limit = dispatcher.settings.max_upload_bytes
    store = dispatcher.store
    staging = store.directory if isinstance(store, LocalStore) else None

    async def receive(request: Request, content_type: str) -> tuple[Path, str, str | None]:
        """Stream the body to disk: `(path, content type, the form part's file name)`."""
        declared = request.headers.get("content-length", "")
        too_large = StarletteHTTPException(413, f"The upload is larger than the limit of {limit} bytes.")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        form: _FormSink | None = None
        raw: Any = None
        if content_type.lower().startswith("multipart/form-data"):
            from python_multipart.multipart import parse_options_header

            boundary = parse_options_header(content_type)[1].get(b"boundary")
            if not boundary:
                raise FieldError("file", "the multipart form has no boundary", type="value_error")
            form = _FormSink(boundary, staging)
            sink = form.write
        else:
            fd, raw_path = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=staging)
            raw = os.fdopen(fd, "wb")
            sink = raw.write
        received = 0
        try:
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise too_large
                if chunk:
                    await asyncio.to_thread(sink, chunk)
            if form is not None:
                return await asyncio.to_thread(form.finish)
            raw.close()
            return Path(raw_path), content_type, None
        except BaseException:
            if form is not None:
                form.close()
                if form.chosen is not None:
                    form.chosen[0].unlink(missing_ok=True)
            else:
                raw.close()
                Path(raw_path).unlink(missing_ok=True)
            raise

    async def upload(request: Request, file_name: str | None = None) -> JSONResponse:
        content_type = request.headers.get("content-type", "application/octet-stream")
        try:
            path, content_type, part_name = await receive(request, content_type)
        except (FieldError, StarletteHTTPException) as exc:
            return error_response(exc, request.state.request_id)
        except Exception as exc:  # python-multipart's parse errors: a malformed form
            from python_multipart.exceptions import FormParserError

            if not isinstance(exc, FormParserError):
                raise
            return error_response(FieldError("file", f"malformed multipart form: {exc}"), request.state.request_id)
        if path.stat().st_size == 0:
            path.unlink(missing_ok=True)
            return error_response(FieldError("file", "the upload is empty", type="missing"),
                                  request.state.request_id)
        uploaded = File.from_path(path, content_type.split(";")[0].strip(), file_name or part_name or "upload")
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
