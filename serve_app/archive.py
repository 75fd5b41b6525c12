"""Safe extraction of the images (and their caption sidecars) from a user's ZIP archive.

Nothing is written to disk: members are read into memory, so no entry name can escape anywhere,
and names that try (`../x`, `/etc/x`, `C:\\x`) reject the whole archive. What counts is what
decompresses, not what the headers claim: every member is read in chunks against the per-file
limit and the archive's remaining total budget, so a ZIP bomb stops at the limit. Junk is skipped
(`__MACOSX/`, hidden files and folders, symlinks, folders, other extensions); nested folders are
walked. An image `a/b/cat.jpg` takes its caption from `a/b/cat.txt` when that file exists.
"""

from __future__ import annotations

import io
import posixpath
import stat
import zipfile
import zlib
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from serve_app.errors import FieldError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
CAPTION_EXTENSION = ".txt"
_CHUNK = 1 << 20
MiB = 1 << 20


class ArchiveLimits(BaseModel):
    """Bounds on what one archive may hold (checked against the decompressed bytes)."""

    model_config = ConfigDict(extra="forbid")

    max_images: int = Field(default=500, ge=1, description="Most images one archive may hold.")
    max_entries: int = Field(default=10_000, ge=1,
                             description="Most members of any kind (folders and junk included) in one archive.")
    max_file_bytes: int = Field(default=64 * MiB, ge=1, description="Most decompressed bytes of one member.")
    max_total_bytes: int = Field(default=1024 * MiB, ge=1,
                                 description="Most decompressed bytes of all the members read (images and captions).")
    max_caption_bytes: int = Field(default=64 * 1024, ge=1, description="Most bytes of one caption sidecar file.")


@dataclass(frozen=True)
class ArchiveImage:
    """One image found in an archive: its path there, its bytes, and its sidecar caption if any."""

    name: str
    data: bytes
    caption: str | None = None


class _Budget:
    """The decompressed bytes the archive may still spend."""

    def __init__(self, total: int) -> None:
        self.left = total


def _is_junk(parts: list[str]) -> bool:
    return any(p == "__MACOSX" or p.startswith(".") for p in parts)


def _safe_name(info: zipfile.ZipInfo, field: str) -> str:
    """The member's normalised relative path; raises on absolute paths and `..` escapes."""
    raw = info.filename.replace("\\", "/")
    drive = len(raw) >= 2 and raw[1] == ":" and raw[0].isalpha()
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if raw.startswith("/") or drive or ".." in parts or "\x00" in raw:
        raise FieldError(field, f"the archive holds an unsafe path: {info.filename!r}")
    return posixpath.join(*parts) if parts else ""


def _is_regular_file(info: zipfile.ZipInfo) -> bool:
    """False for folders, symlinks and other special entries (Unix mode bits, when present)."""
    if info.is_dir():
        return False
    kind = stat.S_IFMT(info.external_attr >> 16)
    return kind in (0, stat.S_IFREG)  # 0: no Unix type bits recorded (Windows tools, Python's writestr)


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, budget: _Budget, field: str) -> bytes:
    """Decompress one member, stopping as soon as it passes `limit` or the archive's budget."""
    if info.flag_bits & 0x1:
        raise FieldError(field, f"{info.filename!r} is encrypted; send an archive without a password")
    if info.file_size > limit:
        raise FieldError(field, f"{info.filename!r} is {info.file_size} bytes; the limit is {limit}")
    out = bytearray()
    with zf.open(info) as member:
        while chunk := member.read(_CHUNK):
            out += chunk
            if len(out) > limit:
                raise FieldError(field, f"{info.filename!r} decompresses past the limit of {limit} bytes")
            if len(out) > budget.left:
                raise FieldError(field, "the archive decompresses past the total limit of its contents")
    budget.left -= len(out)
    return bytes(out)


def extract_images(data: bytes, limits: ArchiveLimits, field: str) -> list[ArchiveImage]:
    """The images of a ZIP archive, sorted by path, each with its sidecar caption if present.

    Args:
        data: the archive's bytes.
        limits: counts and decompressed sizes allowed.
        field: the input field named in errors.

    Returns:
        At least one image; the bytes are not decoded (see the caller for that).

    Raises:
        FieldError: not a ZIP or corrupt, encrypted, an unsafe path, over a limit, or no image.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return _extract(zf, limits, field)
    except FieldError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, ValueError,
            OSError, UnicodeDecodeError) as e:
        raise FieldError(field, f"not a readable ZIP archive: {e}") from e


def _extract(zf: zipfile.ZipFile, limits: ArchiveLimits, field: str) -> list[ArchiveImage]:
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise FieldError(field, f"the archive has {len(infos)} entries; the limit is {limits.max_entries}")
    images: dict[str, zipfile.ZipInfo] = {}
    captions: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = _safe_name(info, field)
        if not name or not _is_regular_file(info) or _is_junk(name.split("/")):
            continue
        stem, ext = posixpath.splitext(name)
        ext = ext.lower()
        if ext in IMAGE_EXTENSIONS:
            images[name] = info
        elif ext == CAPTION_EXTENSION:
            captions[stem] = info
    if not images:
        raise FieldError(field, "the archive holds no images (supported: "
                         + ", ".join(sorted(IMAGE_EXTENSIONS)) + ")")
    if len(images) > limits.max_images:
        raise FieldError(field, f"the archive holds {len(images)} images; the limit is {limits.max_images}")
    budget = _Budget(limits.max_total_bytes)
    found = []
    for name in sorted(images):
        blob = _read(zf, images[name], limits.max_file_bytes, budget, field)
        sidecar = captions.get(posixpath.splitext(name)[0])
        caption = None
        if sidecar is not None:
            text = _read(zf, sidecar, min(limits.max_caption_bytes, limits.max_file_bytes), budget, field)
            caption = " ".join(text.decode("utf-8", errors="replace").lstrip("\ufeff").split()) or None
        found.append(ArchiveImage(name=name, data=blob, caption=caption))
    return found
