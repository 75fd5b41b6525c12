"""Placement-group options for a replica that owns `world_size` ranks.

Bundle 0 holds the replica itself (no GPU: it never touches CUDA); bundle r + 1 holds rank r.
`STRICT_PACK` keeps them on one node, as NCCL over NVLink wants.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RankResources(BaseModel):
    """What each rank and the coordinating replica reserve."""

    model_config = ConfigDict(extra="forbid")

    use_gpu: bool = Field(default=True, description="One GPU per rank (NCCL); false runs the ranks on CPU (gloo).")
    num_cpus_per_rank: float = Field(default=1.0, gt=0, description="CPUs reserved per rank.")
    replica_num_cpus: float = Field(default=1.0, gt=0, description="CPUs of the replica (bundle 0).")
    collective_timeout_s: float = Field(default=600.0, gt=0, description="torch.distributed collective timeout.")
    stop_grace_s: float = Field(default=5.0, gt=0,
                                description="How long ranks get to finish after a failure or cancel before "
                                "the group is declared dead.")


def placement_options(world_size: int, resources: RankResources) -> dict[str, Any]:
    """`serve.deployment` options placing the replica and its ranks in one placement group."""
    rank_bundle: dict[str, float] = {"CPU": resources.num_cpus_per_rank}
    if resources.use_gpu:
        rank_bundle["GPU"] = 1
    return {
        "ray_actor_options": {"num_cpus": resources.replica_num_cpus, "num_gpus": 0},
        "placement_group_bundles": [{"CPU": resources.replica_num_cpus}] + [dict(rank_bundle)
                                                                             for _ in range(world_size)],
        "placement_group_strategy": "STRICT_PACK",
    }
