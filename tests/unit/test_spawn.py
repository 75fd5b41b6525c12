"""`serve_app.distributed.spawn.run_ranks`: N processes in one process group, without Ray (gloo here)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist

from serve_app.distributed.spawn import run_ranks


def sum_of_ranks(rank: int, world_size: int, offset: float) -> dict[str, float]:
    t = torch.tensor([float(rank) + offset])
    dist.all_reduce(t)
    return {"sum": float(t.item()), "world_size": float(dist.get_world_size()), "pid": float(os.getpid())}


def fails_on_rank_one(rank: int, world_size: int) -> int:
    if rank == 1:
        raise ValueError("rank one exploded")
    return rank


def test_rank_zero_returns_after_a_collective_across_processes() -> None:
    out = run_ranks(sum_of_ranks, 2, 0.5, backend="gloo", timeout_s=120)
    assert out["sum"] == 0.5 + 1.5 and out["world_size"] == 2.0 and int(out["pid"]) != os.getpid()


def test_a_failing_rank_is_raised_here() -> None:
    with pytest.raises(RuntimeError, match="rank"):
        run_ranks(fails_on_rank_one, 2, backend="gloo", timeout_s=120)
