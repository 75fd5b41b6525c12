"""Parallel SDXL: data-parallel SDXL on DistributedRunner (see `service.py`)."""

from deployments.parallel_sdxl.service import (
    ParallelSDXLConfig,
    ParallelSDXLInput,
    ParallelSDXLOutput,
    ParallelSDXLService,
    build,
)

__all__ = ["ParallelSDXLConfig", "ParallelSDXLInput", "ParallelSDXLOutput", "ParallelSDXLService", "build"]
