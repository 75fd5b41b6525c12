"""diffusers' own context parallelism for the xFuser service's `native` backend (Flux).

`transformer.enable_parallelism(config=ContextParallelConfig(...))` splits the token sequence over
the initialised `torch.distributed` group at the transformer's declared plan (Flux: the image and
text tokens on the way in, the output gathered at `proj_out`), and runs Ulysses (all-to-all over
the heads) or Ring (K/V passed around) inside each attention. Every rank then holds the whole
prediction, steps the scheduler and can decode: the service takes rank 0's image.

Ring merges partial attentions with their log-sum-exp, which diffusers' `native` (plain SDPA)
backend does not return: Ring needs `_native_cudnn` or `_native_flash` (GPUs). Ulysses works with
any backend, `native` included, so it also runs on CPU over gloo (the CPU test).
"""

from __future__ import annotations

from typing import Any

from components import context_parallel

# diffusers attention backends (`AttentionBackendName` values) this service accepts; the ones that
# need a package the GPU image lacks (flash-attn, sage, hub kernels) are left out on purpose.
DIFFUSERS_ATTENTION = ("native", "_native_cudnn", "_native_flash", "_native_efficient", "_native_math")
RING_ATTENTION = ("_native_cudnn", "_native_flash")  # return the log-sum-exp Ring needs
GPU_DEFAULT_ATTENTION = "_native_cudnn"  # cuDNN attention: ~2x FA2 on H200 at Flux's shapes (measured)


def check_native_attention(attention_backend: str | None, ring_degree: int) -> None:
    """Raise ValueError for an attention backend the native backend cannot use with this layout."""
    if attention_backend is not None and attention_backend not in DIFFUSERS_ATTENTION:
        raise ValueError(f"attention_backend {attention_backend!r} is not one of diffusers' backends this "
                         f"service runs: {', '.join(DIFFUSERS_ATTENTION)}")
    if ring_degree > 1 and attention_backend not in (None, *RING_ATTENTION):
        raise ValueError(f"ring_degree > 1 needs an attention backend that returns the log-sum-exp: "
                         f"{' or '.join(RING_ATTENTION)} (not {attention_backend})")


def enable_context_parallel(transformer: Any, ulysses_degree: int, ring_degree: int,
                            attention_backend: str | None) -> None:
    """Split `transformer`'s sequence over the process group (Ulysses x Ring = world size).

    Every rank must call this, after `torch.distributed` is initialised and before the first call.
    """
    check_native_attention(attention_backend, ring_degree)
    context_parallel.enable(transformer, ulysses_degree, ring_degree, attention_backend)
