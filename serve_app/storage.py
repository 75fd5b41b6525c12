"""Output stores: where generated files go and the URL a client downloads them from.

The replica that makes an output stores it (see `Service.stream_endpoint`), so a video's bytes never
travel through the ingress:

- `local`: a private directory the ingress serves under `/files/<key>`. It lives on one node: the
  ingress and every service replica must run there, or the directory must be shared by all nodes
  (`shared: true`, e.g. NFS). A replica on another node stops at start with an explicit error.
- `s3`: any S3-compatible bucket (AWS, MinIO, R2, ...), through boto3; public or presigned URLs;
  credentials from the environment (boto3's usual chain), never from the config file.
- `data_url`: small outputs inlined as `data:` URLs (nothing stored; handy for tests).
"""

from __future__ import annotations

import asyncio
import base64
import mimetypes
import os
import re
import shutil
import stat
import time
import urllib.parse
import uuid
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from serve_app.io import File, extension_for

FILES_ROUTE = "/files"
# `<32 hex>/<name>` (names as `safe_name` makes them), or the older flat `<32 hex>.<ext>`.
_KEY_RE = re.compile(r"^[0-9a-f]{32}(/[A-Za-z0-9][A-Za-z0-9._-]{0,127}|\.[A-Za-z0-9]{1,16})?$")
_EXT_RE = re.compile(r"\.[A-Za-z0-9]{1,16}")
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 128


def default_directory() -> Path:
    """A private per-user directory: `$XDG_CACHE_HOME/serve_app/files` (else `~/.cache/...`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "serve_app" / "files"


class LocalStorage(BaseModel):
    """Files on disk, served by the ingress at /files."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local"] = "local"
    directory: str | None = Field(default=None, description="Directory of the files; default: a private "
                                  "per-user cache directory (~/.cache/serve_app/files). Created with mode 0700.")
    max_age_s: float | None = Field(default=24 * 3600.0, gt=0,
                                    description="Files older than this are deleted by the sweeper (null keeps them).")
    shared: bool = Field(default=False, description="The directory is the same shared filesystem on every node, "
                         "so replicas on any node may write to it. Otherwise they must run on the head node.")


class S3Storage(BaseModel):
    """An S3-compatible bucket."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["s3"] = "s3"
    bucket: str = Field(description="Bucket name (it must exist).")
    prefix: str = Field(default="", description="Key prefix, e.g. `outputs/`.")
    endpoint_url: str | None = Field(default=None, description="S3 API endpoint (MinIO, R2, ...); default AWS.")
    region: str | None = Field(default=None, description="Region name; default: boto3's configuration.")
    url_mode: Literal["presigned", "public"] = Field(
        default="presigned", description="`presigned`: time-limited signed GET URLs; `public`: plain URLs of a "
        "bucket that allows public reads.")
    public_base_url: str | None = Field(default=None, description="Base of public URLs (a CDN); default: "
                                        "<endpoint>/<bucket>.")
    presign_expiry_s: int = Field(default=24 * 3600, ge=1, le=7 * 24 * 3600, description="Lifetime of presigned URLs.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(default="auto", description="Bucket addressing.")


class DataUrlStorage(BaseModel):
    """Inline data: URLs."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["data_url"] = "data_url"


StorageConfig = Annotated[LocalStorage | S3Storage | DataUrlStorage, Field(discriminator="kind")]


class OutputStore(Protocol):
    """Stores bytes (or a file) and says where a client can fetch them."""

    async def put(self, data: bytes, content_type: str, file_name: str | None, base_url: str) -> str:
        """Store `data`; return its absolute URL (`base_url` is the server's public root)."""
        ...

    async def put_path(self, path: Path, content_type: str, file_name: str | None, base_url: str) -> str:
        """Store the file at `path` (it is moved or deleted); return its URL."""
        ...


def safe_name(file_name: str | None, content_type: str) -> str:
    """The name a stored file is served under (the last segment of its URL, and its `file_name`):
    the base name of `file_name` in `[A-Za-z0-9._-]`, at most 128 characters, with a real extension
    (the content type's when the name has none)."""
    base = PurePosixPath((file_name or "").replace("\\", "/")).name
    name = _UNSAFE_RE.sub("_", base).lstrip("._-")
    stem, ext = (name.rsplit(".", 1)[0], "." + name.rsplit(".", 1)[1]) if "." in name else (name, "")
    if not _EXT_RE.fullmatch(ext):
        stem, ext = name, extension_for(content_type)
    stem = stem[: _MAX_NAME - len(ext)] or "file"
    return f"{stem}{ext}"


def content_type_for(content_type: str | None, file_name: str | None) -> str:
    """The content type to store: the given one, else (or when only `application/octet-stream`)
    the one the file name's extension implies."""
    given = (content_type or "").split(";")[0].strip().lower()
    if given and given != "application/octet-stream":
        return content_type or given
    guessed = mimetypes.guess_type(file_name or "")[0]
    return guessed or content_type or "application/octet-stream"


def _key(content_type: str, file_name: str | None) -> str:
    """`<32 hex>/<safe name>`: unguessable, and the URL ends with the file's name."""
    return f"{uuid.uuid4().hex}/{safe_name(file_name, content_type)}"


class DataUrlStore:
    """Inline `data:` URLs: nothing stored, nothing to serve."""

    async def put(self, data: bytes, content_type: str, file_name: str | None, base_url: str) -> str:
        return f"data:{content_type};base64,{base64.b64encode(data).decode()}"

    async def put_path(self, path: Path, content_type: str, file_name: str | None, base_url: str) -> str:
        data = await asyncio.to_thread(path.read_bytes)
        path.unlink(missing_ok=True)
        return await self.put(data, content_type, file_name, base_url)


def private_directory(directory: str | os.PathLike[str]) -> Path:
    """Create (mode 0700) or check a directory for files: a real directory (not a symlink) owned by
    this user and not writable by others. Raises ValueError otherwise."""
    path = Path(directory).expanduser()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ValueError(f"output directory {path} is a symlink or not a directory")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise ValueError(f"output directory {path} belongs to another user (uid {info.st_uid})")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ValueError(f"output directory {path} is writable by other users; chmod 700 it")
    return path


class LocalStore:
    """A directory on the ingress's node, served under `/files/<key>`."""

    def __init__(self, directory: str | os.PathLike[str], max_age_s: float | None = None) -> None:
        self.directory = private_directory(directory)
        self.max_age_s = max_age_s
        self._last_sweep = 0.0

    def url(self, key: str, base_url: str) -> str:
        return f"{base_url.rstrip('/')}{FILES_ROUTE}/{key}"

    async def put(self, data: bytes, content_type: str, file_name: str | None, base_url: str) -> str:
        key = _key(content_type, file_name)
        await asyncio.to_thread(self._write, key, data)
        return self.url(key, base_url)

    async def put_path(self, path: Path, content_type: str, file_name: str | None, base_url: str) -> str:
        key = _key(content_type, file_name)
        await asyncio.to_thread(self._move, key, path)
        return self.url(key, base_url)

    def _file(self, key: str) -> Path:
        return self.directory / key.replace("/", "_", 1)  # flat on disk: `<hex>_<name>`

    def _write(self, key: str, data: bytes) -> None:
        tmp = self.directory / f".{key.replace('/', '_', 1)}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        tmp.replace(self._file(key))  # readers never see a half-written file
        self._maybe_sweep()

    def _move(self, key: str, path: Path) -> None:
        tmp = self.directory / f".{key.replace('/', '_', 1)}.part"
        shutil.move(path, tmp)  # a rename on the same filesystem, else a copy
        os.chmod(tmp, 0o600)
        tmp.replace(self._file(key))
        self._maybe_sweep()

    def _maybe_sweep(self) -> None:
        now = time.time()
        if self.max_age_s is None or now - self._last_sweep < 60:
            return
        self._last_sweep = now
        for path in self.directory.iterdir():
            try:
                if now - path.lstat().st_mtime > self.max_age_s:
                    path.unlink()
            except FileNotFoundError:
                pass

    def path_for(self, key: str) -> Path | None:
        """The file behind `key`, or None when the key is malformed, unknown, or not a regular file
        (a symlink placed in the directory is never served)."""
        if not _KEY_RE.fullmatch(key):
            return None
        path = self._file(key)
        try:
            info = path.lstat()
        except FileNotFoundError:
            return None
        return path if stat.S_ISREG(info.st_mode) else None

    def key_for_url(self, url: str) -> str | None:
        """The key of one of this store's files that `url` names (`.../files/<key>`, any host: the
        key alone identifies the file), or None."""
        path = urllib.parse.urlsplit(url).path
        marker = path.rfind(FILES_ROUTE + "/")
        if marker < 0:
            return None
        key = urllib.parse.unquote(path[marker + len(FILES_ROUTE) + 1:])
        return key if self.path_for(key) is not None else None

    async def read(self, key: str, max_bytes: int) -> bytes:
        """The content of a stored file; raises ValueError past `max_bytes`, FileNotFoundError
        when it is gone."""

        def read() -> bytes:
            path = self.path_for(key)
            if path is None:
                raise FileNotFoundError(key)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as f:
                data = f.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise ValueError(f"larger than {max_bytes} bytes")
            return data

        return await asyncio.to_thread(read)


class S3Store:
    """Objects in an S3-compatible bucket; boto3 calls run in worker threads."""

    def __init__(self, config: S3Storage) -> None:
        import boto3
        from botocore.config import Config

        self.config = config
        self._client: Any = boto3.client(
            "s3", endpoint_url=config.endpoint_url, region_name=config.region,
            config=Config(s3={"addressing_style": config.addressing_style}, retries={"max_attempts": 3},
                          connect_timeout=10, read_timeout=60, signature_version="s3v4"),
        )

    def _object_key(self, content_type: str, file_name: str | None) -> str:
        return f"{self.config.prefix}{_key(content_type, file_name)}"

    def _extra(self, content_type: str, file_name: str | None) -> dict[str, str]:
        extra = {"ContentType": content_type}
        if file_name:
            extra["ContentDisposition"] = content_disposition(content_type, safe_name(file_name, content_type))
        return extra

    def url(self, key: str) -> str:
        if self.config.url_mode == "public":
            base = self.config.public_base_url or f"{(self.config.endpoint_url or 'https://s3.amazonaws.com').rstrip('/')}/{self.config.bucket}"
            return f"{base.rstrip('/')}/{key}"
        return str(self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.config.bucket, "Key": key}, ExpiresIn=self.config.presign_expiry_s))

    def key_for_url(self, url: str) -> str | None:
        """The object key of one of this store's files that `url` names (a URL this store made:
        public or presigned), or None. Signing a URL is local work: nothing is sent."""
        marker = "0" * 32 + "/probe.bin"
        prefix = self.url(self.config.prefix + marker).split("?", 1)[0]
        prefix = prefix[: prefix.index(marker)]
        bare = url.split("?", 1)[0].split("#", 1)[0]
        if not bare.startswith(prefix):
            return None
        rest = urllib.parse.unquote(bare[len(prefix):])
        return self.config.prefix + rest if _KEY_RE.fullmatch(rest) else None

    async def read(self, key: str, max_bytes: int) -> bytes:
        """An object's content, read with the store's own credentials; ValueError past `max_bytes`."""

        def read() -> bytes:
            head = self._client.head_object(Bucket=self.config.bucket, Key=key)
            if int(head.get("ContentLength", 0)) > max_bytes:
                raise ValueError(f"larger than {max_bytes} bytes")
            body = self._client.get_object(Bucket=self.config.bucket, Key=key)["Body"]
            data: bytes = body.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise ValueError(f"larger than {max_bytes} bytes")
            return data

        return await asyncio.to_thread(read)

    async def put(self, data: bytes, content_type: str, file_name: str | None, base_url: str) -> str:
        key = self._object_key(content_type, file_name)
        await asyncio.to_thread(self._client.put_object, Bucket=self.config.bucket, Key=key, Body=data,
                                **self._extra(content_type, file_name))
        return self.url(key)

    async def put_path(self, path: Path, content_type: str, file_name: str | None, base_url: str) -> str:
        key = self._object_key(content_type, file_name)
        await asyncio.to_thread(self._client.upload_file, str(path), self.config.bucket, key,
                                ExtraArgs=self._extra(content_type, file_name))
        path.unlink(missing_ok=True)
        return self.url(key)


def make_store(config: LocalStorage | S3Storage | DataUrlStorage) -> DataUrlStore | LocalStore | S3Store:
    """Build the store a config describes. It also becomes this process's input store (see
    `input_store`): a replica reads its application's own file URLs from it, not over HTTP."""
    store: DataUrlStore | LocalStore | S3Store
    if isinstance(config, DataUrlStorage):
        store = DataUrlStore()
    elif isinstance(config, S3Storage):
        store = S3Store(config)
    else:
        store = LocalStore(config.directory or default_directory(), config.max_age_s)
    set_input_store(store)
    return store


_input_store: LocalStore | S3Store | None = None


def set_input_store(store: object) -> None:
    """Make `store` the one whose URLs this process reads directly (the replica's own store; each
    Serve replica is its own process). Stores without files to read (data: URLs) change nothing."""
    global _input_store
    if isinstance(store, (LocalStore, S3Store)):
        _input_store = store


def input_store() -> LocalStore | S3Store | None:
    """The store whose file URLs `inputs.fetch_url` reads directly, or None."""
    return _input_store


# Types a browser may render from /files; anything else (HTML, SVG, XML, scripts, PDFs) downloads.
_INLINE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/avif", "text/plain",
                 "application/json")


def content_disposition(content_type: str, file_name: str) -> str:
    """`Content-Disposition` for a stored file: `inline` for media and plain text, `attachment`
    for everything a browser could run as a page."""
    kind = content_type.split(";")[0].strip().lower()
    inline = kind in _INLINE_TYPES or kind.startswith(("audio/", "video/"))
    return f'{"inline" if inline else "attachment"}; filename="{file_name}"'


def check_local_store_node(config: LocalStorage | S3Storage | DataUrlStorage, what: str) -> None:
    """Raise when a non-shared local store is used off the head node (call inside a Ray actor).

    The ingress serves /files from its own disk; a replica on another node would write files the
    ingress can't see, so it fails at start with what to do instead.
    """
    if not isinstance(config, LocalStorage) or config.shared:
        return
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("Alive", True):
            if "node:__internal_head__" in node.get("Resources", {}):
                return
            raise ValueError(
                f"{what} runs on node {node.get('NodeManagerAddress', node_id)}, but the local output store "
                f"lives on the head node's disk, where the ingress serves /files. Use `storage: {{kind: s3, ...}}` "
                "for a cluster, or a directory shared by every node with `storage: {kind: local, directory: "
                "<shared path>, shared: true}`.")


async def materialize(value: Any, store: OutputStore, base_url: str) -> Any:
    """Store every not-yet-stored `File` inside `value` (models, lists, dicts), in place.

    Returns `value`, whose files now carry URLs.
    """
    if isinstance(value, File):
        if value.data is None and value.path is None:
            return value  # already stored
        content_type = content_type_for(value.content_type, value.file_name)
        value.content_type = content_type
        if not isinstance(store, DataUrlStore):
            value.file_name = safe_name(value.file_name, content_type)  # the URL's last segment
        if value.data is not None:
            value.mark_stored(await store.put(value.data, content_type, value.file_name, base_url))
        elif value.path is not None:
            value.mark_stored(await store.put_path(value.path, content_type, value.file_name, base_url))
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
