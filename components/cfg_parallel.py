"""CFG parallelism for pipelines that call their transformer twice per step: once with the prompt's
embeddings (cond), then with the negative prompt's (uncond), on the same latents and timestep.

On a world of two ranks, rank 0 computes the cond branch and rank 1 the uncond branch of the first
call, one all-gather gives every rank both outputs, and the second call returns the gathered uncond
output without computing. Each rank does one forward per step instead of two, with one collective
per step (Ulysses or Ring exchange activations in every attention layer). The arithmetic of each
branch is the one-GPU arithmetic, so the result is the one-GPU result.

The pipeline is left as it is: the transformer's `forward` is wrapped on the instance, and the
caller passes both embeddings in (`active(negative_embeds)`), since rank 1 needs the negative
prompt's at the first call of each step, before the pipeline hands it over.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class CfgSplit:
    """Installed on `transformer` (every rank of a 2-rank group); off until `active()`."""

    def __init__(self, transformer: Any, rank: int, world_size: int) -> None:
        if world_size != 2:
            raise ValueError(f"CFG parallelism splits the two branches over 2 ranks, not {world_size}")
        self.rank = rank
        self.forward = transformer.forward  # the original (bound) forward
        self._negative: Any = None
        self._uncond: Any = None
        self.calls = 0  # forwards this rank computed while active (one per step)
        transformer.forward = self._split_forward

    @contextlib.contextmanager
    def active(self, negative_embeds: Any) -> Iterator[None]:
        """Split the calls of one pipeline run; `negative_embeds` as the pipeline will pass them."""
        self._negative, self._uncond, self.calls = negative_embeds, None, 0
        try:
            yield
        finally:
            self._negative = self._uncond = None

    def _split_forward(self, *args: Any, encoder_hidden_states: Any = None, return_dict: bool = True,
                       **kwargs: Any) -> Any:
        if self._negative is None:  # not active: the plain forward
            return self.forward(*args, encoder_hidden_states=encoder_hidden_states, return_dict=return_dict, **kwargs)
        if self._uncond is not None:  # the step's second call: computed by rank 1 at the first
            out, self._uncond = self._uncond, None
            return (out,) if not return_dict else _output(out)
        import torch
        import torch.distributed as dist

        if encoder_hidden_states.shape != self._negative.shape:
            raise ValueError(f"cond embeddings {list(encoder_hidden_states.shape)} and negative embeddings "
                             f"{list(self._negative.shape)} differ in shape")
        mine = encoder_hidden_states if self.rank == 0 else self._negative
        out = self.forward(*args, encoder_hidden_states=mine, return_dict=False, **kwargs)[0].contiguous()
        self.calls += 1
        both = [torch.empty_like(out) for _ in range(2)]
        dist.all_gather(both, out)
        self._uncond = both[1]
        return (both[0],) if not return_dict else _output(both[0])


def _output(sample: Any) -> Any:
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=sample)
