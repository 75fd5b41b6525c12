"""/flux-preprocess's ranks on NCCL: bf16 rows gathered from CUDA, a rank with no image (the seed
demo's dtype bug), the same file from 1 and 2 ranks, and FLUX.1-dev's full-size encoders."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from deployments.flux_lora.data import decode_preprocessed
from deployments.flux_lora.preprocess_worker import FluxPreprocessWorker
from serve_app.distributed import DistributedRunner

pytestmark = pytest.mark.gpu


@pytest.fixture
def two_gpus(ray_gpus: int) -> None:
    if ray_gpus < 2:
        pytest.skip("needs 2 GPUs")


def payload(n: int, res: int, captions: list[str | None] | None = None) -> dict[str, Any]:
    images = np.random.default_rng(0).integers(0, 256, (n, res, res, 3), dtype=np.uint8)
    return {"images": images, "captions": captions or [None] * n, "trigger_word": "ohwx", "resolution": res,
            "batch_size": 2, "seed": 0}


async def run(world_size: int, preset: str, requests: list[dict[str, Any]]) -> list[Any]:
    runner = DistributedRunner(FluxPreprocessWorker, world_size, use_gpu=True, num_cpus_per_rank=1)
    started = time.monotonic()
    await runner.start(timeout=900, model={"preset": preset}, captioner={"preset": preset}, dtype="auto",
                       caption_num_beams=1, caption_max_new_tokens=8)
    print(f"{preset} x{world_size}: started in {time.monotonic() - started:.1f} s")
    results = []
    try:
        for request in requests:
            started = time.monotonic()
            out = await runner.invoke(request, timeout=600)
            n, res = len(request["captions"]), request["resolution"]
            print(f"{preset} x{world_size}: {n} images at {res}: {time.monotonic() - started:.2f} s")
            results.append(decode_preprocessed(out["data"]))
    finally:  # a failure must not leave the ranks holding the GPUs for the next test
        await runner.stop()
    return results


def test_nccl_gather_in_bf16_with_an_empty_rank(two_gpus: None) -> None:
    import torch

    three, one = payload(3, 256, ["a cat", None, None]), payload(1, 256, ["a dot"])
    two_ranks = asyncio.run(run(2, "tiny", [three, one]))
    one_rank = asyncio.run(run(1, "tiny", [three]))
    data, single = two_ranks
    assert data.latents.dtype == torch.bfloat16 and data.text_embeddings.dtype == torch.bfloat16
    assert data.latents.shape == (3, 4, 32, 32) and data.captions[0] == "ohwx a cat"
    assert single.num_images == 1 and single.captions == ["ohwx a dot"]  # rank 0 held no image
    reference = one_rank[0]
    assert data.captions == reference.captions
    # Not pooled_embeddings: the tiny CLIP tokenizer is trained anew in each process and its BPE
    # trainer numbers tokens differently from run to run (components.tokenizers.clip_tokenizer).
    for name in ("latents", "text_embeddings"):
        torch.testing.assert_close(getattr(data, name).float(), getattr(reference, name).float(),
                                   rtol=2e-2, atol=2e-2)


def test_full_size_encoders_on_two_gpus(two_gpus: None) -> None:
    (data,) = asyncio.run(run(2, "full", [payload(8, 512)]))
    assert data.latents.shape == (8, 16, 64, 64)
    assert data.text_embeddings.shape == (8, 512, 4096) and data.pooled_embeddings.shape == (8, 768)
