"""An image safety checker: any transformers image classifier with an NSFW label.

Images whose NSFW probability exceeds the threshold are flagged and replaced by black images of
the same size, as fal's safety checker does. Which classifier is loaded is the service's config.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from serve_app.models.source import ModelSource, build_on, build_or_load

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

logger = logging.getLogger("ray.serve")

TINY_IMAGE_SIZE = 32
LABELS: dict[str, Any] = {"num_labels": 2, "id2label": {0: "normal", 1: "nsfw"}, "label2id": {"normal": 0, "nsfw": 1}}


def _image_processor(size: int) -> Any:
    """A ViT image processor; the PIL backend, as torchvision is not a dependency."""
    import transformers

    cls = getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    return cls(size={"height": size, "width": size})


def _tiny_classifier(device: str) -> tuple[Any, Any]:
    """A ViT with random weights whose head leans firmly to "normal", so dev outputs stay
    visible; tests set a threshold of 0 to exercise the replacement path."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(**{
        "image_size": TINY_IMAGE_SIZE, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 32, **LABELS,
    })
    with build_on(device, torch.float32):
        model = ViTForImageClassification(config)
    head: Any = model.classifier
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([4.0, -4.0]))
    return model, _image_processor(TINY_IMAGE_SIZE)


def _full_classifier(device: str) -> tuple[Any, Any]:
    """ViT-base/16 at 224 px with two labels: the architecture of common NSFW detectors."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(**LABELS)
    with build_on(device, torch.float32):
        model = ViTForImageClassification(config)
    return model, _image_processor(224)


class SafetyChecker:
    """Flags NSFW images with an image classifier and blacks them out."""

    def __init__(self, source: ModelSource, device: str, threshold: float = 0.5, nsfw_label: str = "nsfw"):
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        def load(model_id: str, kwargs: dict[str, Any]) -> tuple[Any, Any]:
            model = AutoModelForImageClassification.from_pretrained(model_id, **kwargs).to(device)
            return model, AutoImageProcessor.from_pretrained(model_id, **kwargs)

        self.model, self.processor = build_or_load(
            source, load=load,
            presets={"tiny": lambda: _tiny_classifier(device), "full": lambda: _full_classifier(device)},
        )
        self.model.eval()
        self.device = device
        self.threshold = threshold
        labels = {v.lower(): int(k) for k, v in self.model.config.id2label.items()}
        if nsfw_label.lower() not in labels:
            raise ValueError(f"classifier has no {nsfw_label!r} label; labels: {sorted(labels)}")
        self.nsfw_index = labels[nsfw_label.lower()]
        self._torch = torch

    def nsfw_scores(self, images: list[PILImage]) -> list[float]:
        """The NSFW probability of each image."""
        torch = self._torch
        inputs = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, dtype=self.model.dtype)
        with torch.inference_mode():
            logits = self.model(pixel_values=pixels).logits.float()
        return logits.softmax(dim=-1)[:, self.nsfw_index].tolist()

    def nsfw_scores_tensor(self, images: Any) -> list[float]:
        """The NSFW probability of each image of a `[N, 3, H, W]` [0, 1] tensor, preprocessed where it
        lies (on the GPU: no copy to the host, no PIL): the processor's resize, rescale and
        normalisation, as torch ops."""
        import torch.nn.functional as F

        torch = self._torch
        size = self.processor.size
        height, width = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
        mean = torch.tensor(self.processor.image_mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.processor.image_std, device=images.device).view(1, -1, 1, 1)
        with torch.inference_mode():
            pixels = F.interpolate(images.float(), size=(height, width), mode="bilinear", antialias=True,
                                   align_corners=False)
            pixels = ((pixels - mean) / std).to(self.device, dtype=self.model.dtype)
            logits = self.model(pixel_values=pixels).logits.float()
        return logits.softmax(dim=-1)[:, self.nsfw_index].tolist()

    def apply_tensor(self, images: Any) -> tuple[Any, list[bool]]:
        """`apply` for a `[N, 3, H, W]` [0, 1] tensor: flagged images become black (zeros)."""
        flags = [score > self.threshold for score in self.nsfw_scores_tensor(images)]
        if any(flags):
            images = images.clone()
            images[[i for i, f in enumerate(flags) if f]] = 0
            logger.info("safety checker replaced %d of %d images", sum(flags), len(flags))
        return images, flags

    def apply(self, images: list[PILImage]) -> tuple[list[PILImage], list[bool]]:
        """Return the images with flagged ones replaced by black images, and the flags."""
        from PIL import Image as PILImageModule

        flags = [score > self.threshold for score in self.nsfw_scores(images)]
        out = [PILImageModule.new("RGB", im.size) if flagged else im for im, flagged in zip(images, flags, strict=True)]
        if any(flags):
            logger.info("safety checker replaced %d of %d images", sum(flags), len(flags))
        return out, flags
