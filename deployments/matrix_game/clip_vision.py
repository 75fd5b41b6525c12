"""CLIP ViT-H/14 image features for Matrix-Game 2.0's cross-attention, on transformers' CLIP vision model.

The published file `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` is Wan's `XLMRobertaCLIP`
state dict: an open-clip ViT-H/14 visual tower under `visual.*` (fused `attn.to_qkv`, `mlp.{0,2}`,
`norm{1,2}`, `pre_norm`, `post_norm`, `cls_embedding`, `pos_embedding`, a bias-free `patch_embedding`,
a 1280x1024 `head`), an XLM-RoBERTa text tower under `textual.*` and `log_scale`. Only the visual tower
is used: `convert_wan_clip_state_dict` maps every `visual.*` key onto
`transformers.CLIPVisionModelWithProjection` (splitting `to_qkv`, transposing `head`) and leaves the
text tower out. The features are Wan's `use_31_block` output: the hidden states after all but the last
transformer layer, without the post norm ([B, 257, 1280]). Preprocessing follows the published
`encode_video`: bicubic resize of the [-1, 1] frame to 224x224 (no antialias), to [0, 1], then CLIP's
mean/std.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipImageEncoder(nn.Module):
    """Penultimate-layer CLIP ViT tokens of an image."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        self.model = CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
        self.image_size = int(config["image_size"])
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image [B, 3, H, W] in [-1, 1] -> tokens [B, 1 + patches, hidden]."""
        vision = self.model.vision_model
        dtype = vision.embeddings.patch_embedding.weight.dtype
        x = F.interpolate(image.float(), size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        x = ((x * 0.5 + 0.5) - self.mean) / self.std
        h = vision.pre_layrnorm(vision.embeddings(x.to(dtype)))
        for layer in vision.encoder.layers[:-1]:
            h = layer(h, None)
        return h


def convert_wan_clip_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan's CLIP checkpoint -> `ClipImageEncoder` keys (visual tower only; `textual.*` and `log_scale` left out).

    Raises:
        KeyError: a key that is neither part of the visual tower nor of the text tower.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("textual.") or key == "log_scale":
            continue
        if not key.startswith("visual."):
            raise KeyError(key)
        name = key[len("visual."):]
        vm = "model.vision_model."
        if name == "patch_embedding.weight":
            out[vm + "embeddings.patch_embedding.weight"] = value
        elif name == "cls_embedding":
            out[vm + "embeddings.class_embedding"] = value.reshape(-1)
        elif name == "pos_embedding":
            out[vm + "embeddings.position_embedding.weight"] = value.reshape(value.shape[-2], value.shape[-1])
        elif m := re.fullmatch(r"(pre|post)_norm\.(weight|bias)", name):
            out[vm + ("pre_layrnorm." if m[1] == "pre" else "post_layernorm.") + m[2]] = value
        elif name == "head":
            out["model.visual_projection.weight"] = value.t()
        elif m := re.fullmatch(r"transformer\.(\d+)\.(.+)", name):
            layer, rest = vm + f"encoder.layers.{m[1]}.", m[2]
            if mm := re.fullmatch(r"attn\.to_qkv\.(weight|bias)", rest):
                for proj, part in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                    out[layer + f"self_attn.{proj}_proj.{mm[1]}"] = part
            elif mm := re.fullmatch(r"attn\.proj\.(weight|bias)", rest):
                out[layer + f"self_attn.out_proj.{mm[1]}"] = value
            elif mm := re.fullmatch(r"norm([12])\.(weight|bias)", rest):
                out[layer + f"layer_norm{mm[1]}.{mm[2]}"] = value
            elif mm := re.fullmatch(r"mlp\.([02])\.(weight|bias)", rest):
                out[layer + f"mlp.fc{1 if mm[1] == '0' else 2}.{mm[2]}"] = value
            else:
                raise KeyError(key)
        else:
            raise KeyError(key)
    return out


def to_wan_clip_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`ClipImageEncoder` keys -> Wan's `visual.*` names (the inverse of the above; for test files)."""
    out: dict[str, torch.Tensor] = {}
    vm = "model.vision_model."
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key == "model.visual_projection.weight":
            out["visual.head"] = value.t().contiguous()
            continue
        name = key[len(vm):]
        if name == "embeddings.patch_embedding.weight":
            out["visual.patch_embedding.weight"] = value
        elif name == "embeddings.class_embedding":
            out["visual.cls_embedding"] = value.view(1, 1, -1)
        elif name == "embeddings.position_embedding.weight":
            out["visual.pos_embedding"] = value[None]
        elif m := re.fullmatch(r"(pre_layrnorm|post_layernorm)\.(weight|bias)", name):
            out[f"visual.{'pre' if m[1] == 'pre_layrnorm' else 'post'}_norm.{m[2]}"] = value
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", name):
            prefix, rest = f"visual.transformer.{m[1]}.", m[2]
            if mm := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest):
                fused.setdefault(prefix + f"attn.to_qkv.{mm[2]}", {})[mm[1]] = value
            elif mm := re.fullmatch(r"self_attn\.out_proj\.(.+)", rest):
                out[prefix + f"attn.proj.{mm[1]}"] = value
            elif mm := re.fullmatch(r"layer_norm([12])\.(.+)", rest):
                out[prefix + f"norm{mm[1]}.{mm[2]}"] = value
            elif mm := re.fullmatch(r"mlp\.fc([12])\.(.+)", rest):
                out[prefix + f"mlp.{0 if mm[1] == '1' else 2}.{mm[2]}"] = value
    for name, parts in fused.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out
