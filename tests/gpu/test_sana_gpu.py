"""Sana on a CUDA GPU: tiny preset correctness and the full (real-architecture) preset building
and generating in bf16. Run on the device machines: `pytest -m gpu tests/gpu`."""

from __future__ import annotations

import io

import pytest
from PIL import Image as PILImage

from deployments.sana import SanaConfig, SanaService, SprintInput, TextToImageInput

pytestmark = pytest.mark.gpu


def config(preset: str) -> SanaConfig:
    return SanaConfig.model_validate({
        "model": {"preset": preset}, "sprint_model": {"preset": preset}, "safety_checker": {"preset": preset},
        "device": "cuda", "warmup": {"enabled": False},
    })


def test_tiny_preset_on_cuda_is_reproducible() -> None:
    service = SanaService(config("tiny"))
    req = TextToImageInput(prompt="a cat", image_size={"width": 640, "height": 480}, num_inference_steps=3,
                           seed=5, output_format="png")
    a, b = service.generate(req), service.generate(req)
    assert a.images[0].data == b.images[0].data
    assert PILImage.open(io.BytesIO(a.images[0].data or b"")).size == (640, 480)


def test_full_preset_builds_real_sizes_and_generates() -> None:
    import torch

    service = SanaService(config("full"))
    params = sum(p.numel() for p in service.base.transformer.parameters())
    assert 1.5e9 < params < 1.7e9  # Sana 1600M
    assert service.base.transformer.dtype == torch.bfloat16
    assert service.sprint.text_encoder is service.base.text_encoder
    out = service.generate(TextToImageInput(prompt="a cat", image_size="square_hd", num_inference_steps=2, seed=0))
    assert (out.images[0].width, out.images[0].height) == (1024, 1024)
    sprint = service.sprint_generate(SprintInput(prompt="a cat", image_size="square_hd", seed=0))
    assert sprint.images[0].width == 1024
    del service
    torch.cuda.empty_cache()
