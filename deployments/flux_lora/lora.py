"""Flux LoRA: which modules get adapters, how they are initialised, saved and fingerprinted.

The targets are those of fal's Flux LoRA trainer: in each of the double-stream blocks the image and
text attention projections and both feed-forward networks (12 modules), in each single-stream block
the attention projections, `proj_mlp` and `proj_out` (5 modules): 19 x 12 + 38 x 5 = 418 modules on
FLUX.1-dev. The base model is frozen; only `lora_A` / `lora_B` train.

Checkpoints are diffusers' Flux LoRA files (`pytorch_lora_weights.safetensors`, keys
`transformer.<module>.lora_A.weight` / `.lora_B.weight`, the adapter config in the metadata), written by
`FluxPipeline.save_lora_weights` and read back by `FluxPipeline.load_lora_weights`: the layout
diffusers' own Flux LoRA training script writes.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

ADAPTER = "default"
CHECKPOINT_NAME = "pytorch_lora_weights.safetensors"

DOUBLE_BLOCK_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
)
SINGLE_BLOCK_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out")


def target_modules(num_layers: int, num_single_layers: int) -> list[str]:
    """Fully qualified names of the modules that get a LoRA adapter (418 for FLUX.1-dev's 19 + 38 blocks)."""
    return ([f"transformer_blocks.{i}.{m}" for i in range(num_layers) for m in DOUBLE_BLOCK_TARGETS]
            + [f"single_transformer_blocks.{i}.{m}" for i in range(num_single_layers) for m in SINGLE_BLOCK_TARGETS])


def add_lora(transformer: Any, rank: int = 16, alpha: int = 16) -> None:
    """Freeze `transformer` and add the trainable adapter (gaussian `lora_A`, zero `lora_B`).

    The adapter's parameters are float32 whatever the base dtype: they are the optimizer's master
    weights (the forward runs them in the base dtype under autocast, see `train_loop`).
    """
    import torch
    from peft import LoraConfig

    transformer.requires_grad_(False)
    cfg = transformer.config
    transformer.add_adapter(LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", init_lora_weights="gaussian",
        target_modules=target_modules(cfg.num_layers, cfg.num_single_layers),
    ), adapter_name=ADAPTER)
    for param in transformer.parameters():
        if param.requires_grad:
            param.data = param.data.to(torch.float32)


def lora_layers(model: Any) -> list[Any]:
    """The modules that carry an adapter (peft `LoraLayer`s)."""
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def reset_lora(transformer: Any, seed: int) -> None:
    """Re-initialise the adapter in place (same seed: same weights on every rank), for a new job."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(transformer):
            # Drawn on the CPU so every device type gives the same initial adapter for a seed.
            a = layer.lora_A[ADAPTER].weight
            a.copy_(torch.randn(a.shape, generator=generator, dtype=torch.float32) / layer.r[ADAPTER])
            layer.lora_B[ADAPTER].weight.zero_()


def trainable_parameters(model: Any) -> list[tuple[str, Any]]:
    """`(name, parameter)` of every trainable parameter, in a stable order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def param_groups(model: Any, learning_rate: float, b_up_factor: float) -> list[dict[str, Any]]:
    """AdamW groups as fal's trainer builds them: `lora_A` at `learning_rate`, `lora_B` (the
    "up" projection) at `learning_rate * b_up_factor`."""
    a = [p for n, p in trainable_parameters(model) if ".lora_A." in n]
    b = [p for n, p in trainable_parameters(model) if ".lora_B." in n]
    if not a or len(a) != len(b):
        raise ValueError(f"expected matching lora_A / lora_B parameters, got {len(a)} and {len(b)}")
    return [{"params": a, "lr": learning_rate, "name": "lora_A"},
            {"params": b, "lr": learning_rate * b_up_factor, "name": "lora_B"}]


def lora_state_dict(transformer: Any, dtype: Any = None) -> dict[str, Any]:
    """The adapter's weights with peft's module-relative keys (`...to_q.lora_A.weight`), on the CPU."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(transformer, adapter_name=ADAPTER)
    return {k: v.detach().to("cpu", dtype=dtype or v.dtype).contiguous() for k, v in state.items()}


def save_checkpoint(transformer: Any, dtype: Any = None) -> bytes:
    """The adapter as a diffusers Flux LoRA file (`pytorch_lora_weights.safetensors`), as bytes.

    `peft`'s keys are saved as they are, like diffusers' Flux training script does:
    `convert_state_dict_to_diffusers` would rename only the attention projections
    (`to_q.lora.down`) and leave the rest as `lora_A`, a mixed layout other tools do not read.
    """
    from diffusers import FluxPipeline

    metadata = transformer.peft_config[ADAPTER].to_dict()
    with tempfile.TemporaryDirectory(prefix="flux-lora-") as out:
        FluxPipeline.save_lora_weights(out, transformer_lora_layers=lora_state_dict(transformer, dtype),
                                       weight_name=CHECKPOINT_NAME, transformer_lora_adapter_metadata=metadata)
        return (Path(out) / CHECKPOINT_NAME).read_bytes()


def lora_digest(model: Any) -> str:
    """SHA-256 of every trainable parameter's exact bytes (equal digests: identical adapters)."""
    digest = hashlib.sha256()
    for name, param in trainable_parameters(model):
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()
