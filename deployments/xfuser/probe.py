"""Per-block divergence probe: where a parallel layout's activations first leave the 1-GPU run's.

`BlockRecorder` hooks every repeated transformer block (before any parallel wrapping, so each block
keeps its index in the whole model) and records the image-token output of the first `calls`
transformer calls: call 0 is step 0, call 1 step 1 (or PipeFusion's first patch of step 1). Each
record also says which part of the whole it is: the token ranges the rank holds (sequence shards,
PipeFusion patches) and its share of the batch (CFG parallel). `compare` lines the shards of an
N-rank run up against the 1-GPU records and reports the relative error per call and block.
A transformer that is exact under a layout shows ~1e-3 in bf16 at every block of call 0; the
first block far above that is where the divergence starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deployments.xfuser.speed import repeated_blocks

# (token ranges of the whole sequence that this rank holds, or None for all; batch index, batch parts)
Where = Callable[[], tuple[list[tuple[int, int]] | None, int, int]]


def whole() -> tuple[list[tuple[int, int]] | None, int, int]:
    """The 1-GPU run (and the native backend, whose shards `compare` places by equal chunks)."""
    return None, 0, 1


def xfuser_where() -> tuple[list[tuple[int, int]] | None, int, int]:
    """This xfuser rank's token ranges (its sequence shard, or the current PipeFusion patch) and CFG half."""
    from xfuser.core.distributed import (
        get_classifier_free_guidance_rank,
        get_classifier_free_guidance_world_size,
        get_runtime_state,
    )

    state = get_runtime_state()
    ranges = [(int(start), int(end)) for start, end in state.pp_patches_token_start_end_idx_global]
    tokens = [ranges[int(state.pipeline_patch_idx)]] if state.patch_mode else ranges
    return tokens, int(get_classifier_free_guidance_rank()), int(get_classifier_free_guidance_world_size())


@dataclass
class Record:
    """One block's output at one transformer call on one rank."""

    call: int
    block: int
    tensor: Any  # float32 CPU, [batch, tokens, dim]
    tokens: list[tuple[int, int]] | None
    batch_index: int
    batch_parts: int


@dataclass
class BlockRecorder:
    """Records block outputs of the first `calls` transformer calls (see the module docstring)."""

    transformer: Any
    calls: int = 2
    where: Where = whole
    records: list[Record] = field(default_factory=list)
    _call: int = -1
    _last_block: int = -1
    _handles: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        for index, block in enumerate(repeated_blocks(self.transformer)):
            self._handles.append(block.register_forward_pre_hook(self._count(index)))
            self._handles.append(block.register_forward_hook(self._hook(index)))

    def _count(self, index: int) -> Callable[..., None]:
        def count(module: Any, args: Any) -> None:
            # blocks run in index order, so a block at or below the last one starts a new call (a
            # PipeFusion stage only runs its own blocks, whatever their first index)
            if index <= self._last_block or self._call < 0:
                self._call += 1
            self._last_block = index

        return count

    def _hook(self, index: int) -> Callable[..., None]:
        def record(module: Any, args: Any, output: Any) -> None:
            if self._call >= self.calls or self._call < 0:
                return
            tensor = output[-1] if isinstance(output, tuple) else output  # image tokens come last
            tokens, part, parts = self.where()
            self.records.append(Record(self._call, index, tensor.detach().float().cpu().clone(), tokens, part,
                                       parts))

        return record

    def restart(self) -> None:
        """Forget the records; the next transformer call is call 0 again."""
        self.records.clear()
        self._call = self._last_block = -1

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def _candidates(record: Record, reference: Any) -> list[Any]:
    """The parts of the 1-GPU tensor this rank's record may stand for, best guess first."""
    import torch

    ref = reference
    if record.batch_parts > 1 and ref.shape[0] == record.tensor.shape[0] * record.batch_parts:
        ref = ref.chunk(record.batch_parts, dim=0)[record.batch_index]
    n = record.tensor.shape[1]
    out = []
    if record.tokens and sum(end - start for start, end in record.tokens) == n:
        out.append(torch.cat([ref[:, start:end] for start, end in record.tokens], dim=1))
    if ref.shape[1] % n == 0:  # shards we could not place: compare with each equal chunk
        out.extend(ref.split(n, dim=1))
    return [c for c in out if c.shape == record.tensor.shape]


def relative_error(record: Record, reference: Any) -> float | None:
    """max |shard - 1-GPU| / max |1-GPU| over the best-matching part; None if no part fits."""
    errors = [float((record.tensor - c).abs().max() / c.abs().max().clamp_min(1e-12))
              for c in _candidates(record, reference)]
    return min(errors) if errors else None


def compare(reference: list[Record], shards: list[list[Record]]) -> list[dict[str, Any]]:
    """Per (call, block): the worst relative error over the ranks that hold that block."""
    ref = {(r.call, r.block): r.tensor for r in reference}
    worst: dict[tuple[int, int], float | None] = {}
    for records in shards:
        for record in records:
            key = (record.call, record.block)
            if key not in ref:
                continue
            err = relative_error(record, ref[key])
            old = worst.get(key)
            worst[key] = err if old is None else (old if err is None else max(old, err))
    return [{"call": c, "block": b, "error": worst[(c, b)]} for c, b in sorted(worst)]


def first_divergence(rows: list[dict[str, Any]], threshold: float) -> dict[str, Any] | None:
    """The first (call, block) whose error exceeds `threshold` (or could not be placed)."""
    for row in rows:
        if row["error"] is None or row["error"] > threshold:
            return row
    return None
