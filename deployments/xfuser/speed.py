"""Lossless speed levers of the xFuser service's transformer: how it is compiled, fused QKV, and a
compile cache that replicas on one node share.

- `compile.mode`: torch.compile's mode. `default` fuses elementwise chains (3-5x fewer launches);
  `max-autotune-no-cudagraphs` also benchmarks GEMM/Triton configs at warm-up; `reduce-overhead`
  and `max-autotune` replay each compiled graph as a CUDA graph, so a step costs no CPU launches
  at all (what makes sequence parallelism scale once the GPU work per rank is small).
- `compile.regional`: compile the repeated transformer blocks one by one (Flux: 19 + 38 blocks,
  two distinct graphs) instead of the whole forward: the same kernels, compiled once and reused,
  so warm-up takes a fraction of the time.
- `compile.cache_dir`: inductor's and Triton's caches in one directory. A second replica on the
  node (or a restart) loads the compiled graphs and kernels instead of compiling them.
- `fuse_qkv`: one projection GEMM for Q, K and V (diffusers' `fuse_qkv_projections`).
All of these change rounding only; the parity tests hold them to the same tolerances.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CompileMode = Literal["default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune"]
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "blocks")  # repeated blocks of every family


class CompileSpec(BaseModel):
    """How `use_torch_compile` compiles the transformer."""

    model_config = ConfigDict(extra="forbid")

    mode: CompileMode = Field(default="default", description="torch.compile mode: default, "
                              "max-autotune-no-cudagraphs, or with CUDA graphs reduce-overhead / max-autotune.")
    regional: bool = Field(default=False, description="Compile each repeated transformer block instead of the "
                           "whole forward (same kernels, much shorter warm-up).")
    cache_dir: str | None = Field(default=None, description="Inductor/Triton cache directory shared by the "
                                  "replicas of a node, so a second replica loads compiled kernels instead of "
                                  "compiling. Unset: torch's per-user default (/tmp/torchinductor_<user>).")

    @model_validator(mode="after")
    def _no_regional_cuda_graphs(self) -> CompileSpec:
        if self.regional and self.mode in CUDA_GRAPH_MODES:
            raise ValueError(
                f"compile.regional with mode {self.mode} (CUDA graphs) is not supported: every block replays one "
                "graph whose outputs the next replay overwrites while the model still reads them (Flux, "
                "Ulysses-2 on 2 x H200: 'accessing tensor output of CUDAGraphs that has been overwritten'). "
                "Use CUDA graphs on the whole transformer (regional: false), or regional without them "
                "(mode default or max-autotune-no-cudagraphs)")
        return self


def use_compile_cache(cache_dir: str | None) -> None:
    """Point inductor's and Triton's caches at `cache_dir`. Call before the first compile."""
    if not cache_dir:
        return
    os.makedirs(cache_dir, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    os.environ["TRITON_CACHE_DIR"] = os.path.join(cache_dir, "triton")
    # on by default in recent torch; stated so an environment that turned them off is overruled
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
    os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "1"


def repeated_blocks(transformer: Any) -> list[Any]:
    """The transformer's repeated blocks (through an xfuser wrapper too), in call order."""
    inner = getattr(transformer, "module", transformer)  # xfuser wrappers keep the diffusers model here
    found: list[Any] = []
    for name in BLOCK_LISTS:
        blocks = getattr(inner, name, None)
        if blocks is not None:
            found.extend(blocks)
    return found


def compile_transformer(transformer: Any, spec: CompileSpec) -> str:
    """Compile `transformer` in place as `spec` says; returns what was compiled (for the logs).

    Whole: its `forward` (as xfuser's own flag does). Regional: each repeated block; a model
    without repeated blocks (SDXL's UNet) is compiled whole.
    """
    import torch

    mode = None if spec.mode == "default" else spec.mode
    blocks = repeated_blocks(transformer) if spec.regional else []
    if blocks:
        for block in blocks:
            block.compile(mode=mode)
        return f"{len(blocks)} blocks, mode {spec.mode}"
    transformer.forward = torch.compile(transformer.forward, mode=mode)
    return f"whole forward, mode {spec.mode}"


def fuse_qkv(transformer: Any) -> None:
    """One Q/K/V projection per attention (before any parallel wrapping or compiling)."""
    transformer.fuse_qkv_projections()
