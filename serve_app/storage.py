"""Output store: where generated files go and the URL a client downloads them from.

`local` writes into a directory that the ingress serves under `/files/<key>`; `data_url` inlines
small outputs as `data:` URLs (no disk, handy for tests). An S3-compatible store can implement the
same two methods later.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from serve_app.io import File, extension_for

FILES_ROUTE = "/files"
_KEY_RE = re.compile(r"^[0-9a-f]{32}(\.[A-Za-z0-9]{1,8})?$")


class StorageConfig(BaseModel):
    """Which output store the ingress uses."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "data_url"] = Field(
        default="local", description="`local`: files on disk served at /files; `data_url`: inline data: URLs."
    )
    directory: str | None = Field(
        default=None,
        description="Directory for the local store; default: <system temp dir>/serve_app_files.",
    )
    max_age_s: float | None = Field(
        default=24 * 3600.0,
        gt=0,
        description="Files older than this are deleted by the local store's sweeper (null keeps them).",
    )


class OutputStore(Protocol):
    """Stores bytes and says where a client can fetch them."""

    async def put(self, data: bytes, content_type: str, file_name: str | None, base_url: str) -> str:
        """Store `data`; return its absolute URL (`base_url` is the server's public root)."""
        ...


class DataUrlStore:
    """Inline `data:` URLs: nothing stored, nothing to serve."""

    async def put(self, data: bytes, content_type: str, file_name: str | None, base_url: str) -> str:
        return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


class LocalStore:
    """A directory on the ingress's node, served under `/files/<key>`."""

    def __init__(self, directory: str | os.PathLike[str], max_age_s: float | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_age_s = max_age_s
        self._last_sweep = 0.0

    async def put(self, data: bytes, content_type: str, file_name: str | None, base_url: str) -> str:
        ext = Path(file_name).suffix if file_name else ""
        if not re.fullmatch(r"\.[A-Za-z0-9]{1,8}", ext):
            ext = extension_for(content_type)
        key = f"{uuid.uuid4().hex}{ext}"
        await asyncio.to_thread(self._write, key, data)
        return f"{base_url.rstrip('/')}{FILES_ROUTE}/{key}"

    def _write(self, key: str, data: bytes) -> None:
        tmp = self.directory / f".{key}.part"
        tmp.write_bytes(data)
        tmp.replace(self.directory / key)  # readers never see a half-written file
        self._maybe_sweep()

    def _maybe_sweep(self) -> None:
        now = time.time()
        if self.max_age_s is None or now - self._last_sweep < 60:
            return
        self._last_sweep = now
        for path in self.directory.iterdir():
            try:
                if now - path.stat().st_mtime > self.max_age_s:
                    path.unlink()
            except FileNotFoundError:
                pass

    def path_for(self, key: str) -> Path | None:
        """The file behind `key`, or None when the key is malformed or unknown."""
        if not _KEY_RE.fullmatch(key):
            return None
        path = self.directory / key
        return path if path.is_file() else None


def make_store(config: StorageConfig) -> DataUrlStore | LocalStore:
    """Build the store a config describes."""
    if config.kind == "data_url":
        return DataUrlStore()
    directory = config.directory or os.path.join(tempfile.gettempdir(), "serve_app_files")
    return LocalStore(directory, config.max_age_s)


async def materialize(value: Any, store: OutputStore, base_url: str) -> Any:
    """Store every not-yet-stored `File` inside `value` (models, lists, dicts), in place.

    Returns `value`, whose files now carry URLs.
    """
    if isinstance(value, File):
        if value.data is not None:
            url = await store.put(value.data, value.content_type or "application/octet-stream",
                                  value.file_name, base_url)
            value.mark_stored(url)
        return value
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            await materialize(getattr(value, name), store, base_url)
    elif isinstance(value, (list, tuple)):
        for item in value:
            await materialize(item, store, base_url)
    elif isinstance(value, dict):
        for item in value.values():
            await materialize(item, store, base_url)
    return value
