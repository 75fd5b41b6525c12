"""Cancellation agreed by every rank, without stalling the GPU.

Ranks see a cancel flag at different moments, but they must leave a loop that runs collectives at
the same step. Agreeing means a collective (an all-reduce of the flag); reading its result on the
host right away (`.item()`) would make the CPU wait for the GPU at every step, so it could no
longer queue the next step's kernels while the GPU works.

`CancelAgreement.poll()` launches this step's all-reduce and reads the one launched `lag` calls
earlier, from pinned host memory after its CUDA event: by then the GPU has usually finished it, and
if not the host waits only for work `lag` steps old, while the newer steps stay queued. Every rank
reads the same reduced value at the same call, so they all stop together, at most `lag + 1` steps
after the flag was set. On CPU (gloo) the all-reduce is synchronous anyway and `lag` is 0.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class CancelAgreement:
    """One per request and rank; `poll(local_flag)` at the same points on every rank."""

    def __init__(self, device: Any, world_size: int, lag: int | None = None) -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.world_size = world_size
        self.cuda = self.device.type == "cuda"
        self.lag = (2 if self.cuda else 0) if lag is None else lag
        self._pending: deque[tuple[Any, Any]] = deque()
        self._slots = [torch.zeros(1, dtype=torch.int32, pin_memory=self.cuda) for _ in range(self.lag + 1)]
        self._next_slot = 0
        self.polls = 0

    def poll(self, local: bool) -> bool:
        """A collective: True on every rank, at the same call, once any rank passed `local=True`
        (`lag` calls after it was launched)."""
        import torch.distributed as dist

        torch = self._torch
        self.polls += 1
        if self.world_size == 1 or not dist.is_initialized():
            return local
        flag = torch.full((1,), 1 if local else 0, dtype=torch.int32, device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        host = self._slots[self._next_slot]
        self._next_slot = (self._next_slot + 1) % len(self._slots)
        event = None
        if self.cuda:
            host.copy_(flag, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host.copy_(flag)
        self._pending.append((event, host))
        if len(self._pending) <= self.lag:
            return False
        event, host = self._pending.popleft()
        if event is not None:
            event.synchronize()  # work `lag` steps old: newer steps stay queued on the GPU
        return bool(host.item())
