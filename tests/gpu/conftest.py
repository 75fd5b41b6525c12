"""GPU tests share one Ray cluster that sees every GPU of the machine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Ray workers must import both this repo and whatever the environment already adds (the device
# machines put their packages on PYTHONPATH).
PYTHONPATH = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session")
def ray_gpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    import ray
    import torch

    gpus = torch.cuda.device_count()
    started = False
    if not ray.is_initialized():
        ray.init(address="local", num_gpus=gpus, include_dashboard=False, log_to_driver=False,
                 _temp_dir=str(tmp_path_factory.mktemp("ray")), runtime_env={"env_vars": {"PYTHONPATH": PYTHONPATH}})
        started = True
    yield gpus
    if started:
        ray.shutdown()
