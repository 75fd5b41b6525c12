"""Where a model's weights come from.

A `ModelSource` is either `id` (a hub id or a local directory, loaded with the library's own
`from_pretrained`; `HF_HUB_OFFLINE=1` is respected by the libraries) or `preset`:
- `tiny`: the same classes from small configs with seeded random weights, for CPU tests and dev;
- `full`: the real architecture's published config with random weights, built on the target
  device: outputs are noise, FLOPs and memory are the real model's (benchmarks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

T = TypeVar("T")

Preset = Literal["tiny", "full"]
DeviceName = Literal["auto", "cpu", "cuda"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]


class ModelSource(BaseModel):
    """Exactly one of `id` and `preset`."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, description="Hub id (org/name) or a local directory.")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    local_files_only: bool = Field(
        default=False, description="Never reach the hub: load from the cache or a local directory."
    )
    preset: Preset | None = Field(default=None, description="Build a synthetic model instead: tiny or full.")
    seed: int = Field(default=0, description="Seed of a preset's random weights.")

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if (self.id is None) == (self.preset is None):
            raise ValueError("set exactly one of `id` (hub id or local dir) and `preset` (tiny or full)")
        return self

    @property
    def is_local_dir(self) -> bool:
        return self.id is not None and Path(self.id).expanduser().is_dir()

    def pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `from_pretrained` besides the id."""
        kwargs: dict[str, Any] = {}
        if self.revision is not None:
            kwargs["revision"] = self.revision
        if self.local_files_only or self.is_local_dir:
            kwargs["local_files_only"] = True
        return kwargs

    def describe(self) -> str:
        return f"preset:{self.preset}" if self.preset else str(self.id)


def resolve_device(name: DeviceName) -> str:
    """`auto` means CUDA when present, else CPU."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def resolve_dtype(name: DtypeName, device: str) -> Any:
    """`auto` means bfloat16 on CUDA and float32 on CPU."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


@contextlib.contextmanager
def build_on(device: str, dtype: Any) -> Iterator[None]:
    """Allocate new modules' parameters straight on `device` in `dtype` (no CPU copy first)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_or_load(
    source: ModelSource,
    *,
    load: Callable[[str, dict[str, Any]], T],
    presets: dict[str, Callable[[], T]],
) -> T:
    """Load `source.id` with `load(id, kwargs)`, or build its preset with a seeded RNG."""
    if source.id is not None:
        return load(source.id, source.pretrained_kwargs())
    import torch

    if source.preset not in presets:
        raise ValueError(f"no {source.preset!r} preset; available: {sorted(presets)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(source.seed)
        return presets[source.preset]()
