"""Image outputs from tensors: fit to size, encode, and the safety checker on tensors."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import ImageOps

from components.safety import SafetyChecker
from serve_app.imaging import encode_images, fit, to_uint8
from serve_app.models.source import ModelSource


def gradient(n: int, h: int, w: int) -> torch.Tensor:
    y = torch.linspace(0, 1, h).view(1, 1, h, 1).expand(n, 1, h, w)
    x = torch.linspace(0, 1, w).view(1, 1, 1, w).expand(n, 1, h, w)
    return torch.cat([x, y, (x + y) / 2], dim=1)


def test_fit_matches_pils_cover_and_centre_crop() -> None:
    images = gradient(2, 96, 128)
    out = fit(images, 64, 64)
    assert out.shape == (2, 3, 64, 64)
    pil = PILImage.fromarray(to_uint8(images)[0].permute(1, 2, 0).numpy())
    expected = np.asarray(ImageOps.fit(pil, (64, 64), method=3), dtype=np.float32)
    ours = to_uint8(out)[0].permute(1, 2, 0).numpy().astype(np.float32)
    assert np.abs(ours - expected).mean() < 2.0  # the same crop and scale; resampling differs by rounding
    assert fit(images, 128, 96) is images


def test_encode_gives_fal_images_in_both_formats() -> None:
    images = gradient(2, 40, 56)
    jpeg = encode_images(images, "jpeg")
    png = encode_images(images, "png")
    assert [(i.content_type, i.width, i.height) for i in jpeg] == [("image/jpeg", 56, 40)] * 2
    assert png[0].content_type == "image/png" and png[0].file_name.endswith(".png")
    decoded = np.asarray(PILImage.open(io.BytesIO(png[0].read_bytes())))
    assert np.array_equal(decoded, to_uint8(images)[0].permute(1, 2, 0).numpy())  # PNG is lossless


def test_safety_checker_on_tensors_agrees_with_the_pil_path() -> None:
    torch.manual_seed(0)
    checker = SafetyChecker(ModelSource(preset="tiny"), "cpu", threshold=0.5)
    images = gradient(2, 64, 64)
    pils = [PILImage.fromarray(a) for a in to_uint8(images).permute(0, 2, 3, 1).numpy()]
    assert np.allclose(checker.nsfw_scores_tensor(images), checker.nsfw_scores(pils), atol=0.02)
    checker.threshold = 0.0  # everything flagged: black images
    blacked, flags = checker.apply_tensor(images)
    assert flags == [True, True] and float(blacked.abs().sum()) == 0.0 and float(images.sum()) > 0
