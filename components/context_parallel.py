"""diffusers' own context parallelism, for any transformer that declares a plan (Flux, Wan).

`transformer.enable_parallelism(config=ContextParallelConfig(...))` splits the token sequence over
the initialised `torch.distributed` group: Ulysses (all-to-all over the heads) and/or Ring (K/V
passed around); their product is the world size. Ring merges partial attentions with their
log-sum-exp, which diffusers' `native` (plain SDPA) backend does not return: on GPUs Ring needs
`_native_cudnn` or `_native_flash`. Ulysses runs with any backend, so also on CPU ranks over gloo.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def one_device_when_none() -> Iterator[None]:
    """diffusers picks a rank's device as `rank % torch.accelerator.device_count()`, which divides
    by zero on a host without accelerators (CPU ranks over gloo). There the rank's device is the CPU,
    one device: report 1 while the parallel config is resolved, then put torch's function back."""
    import torch

    if torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


def compile_repeated_blocks(transformer: Any, **compile_kwargs: Any) -> int:
    """Regional compilation that composes with `enable`: compile each repeated block's own forward
    (`transformer._repeated_blocks`), before `enable` is called. Returns the number of blocks.

    diffusers' `compile_repeated_blocks` compiles each block's whole call, and `enable_parallelism`
    wraps the forward of the blocks its plan names in hooks (Wan splits the sequence at its first
    block's input). Dynamo cannot trace those hooks in one graph (they call `inspect.signature`):
    compiled Ulysses-2 and Ring-2 Wan failed on 2 x H200. Compiled here, the function the hooks wrap
    is the compiled forward, and the hooks run outside it. Compilation itself is lazy (first call).
    """
    import torch

    names = set(getattr(transformer, "_repeated_blocks", ()) or ())
    blocks = [m for m in transformer.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(transformer).__name__} declares no repeated blocks to compile")
    for block in blocks:
        block.forward = torch.compile(block.forward, **compile_kwargs)
    return len(blocks)


def enable(transformer: Any, ulysses_degree: int = 1, ring_degree: int = 1,
           attention_backend: str | None = None) -> None:
    """Set the attention backend (if given) and split `transformer`'s sequence over the process group.

    Every rank must call this, after `torch.distributed` is initialised and before the first call;
    the caller checks the layout against its model first.
    """
    from diffusers import ContextParallelConfig

    if attention_backend:
        transformer.set_attention_backend(attention_backend)
    config = ContextParallelConfig(ulysses_degree=ulysses_degree if ulysses_degree > 1 else None,
                                   ring_degree=ring_degree if ring_degree > 1 else None)
    with one_device_when_none():
        transformer.enable_parallelism(config=config)
