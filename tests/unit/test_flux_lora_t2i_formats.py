"""LoRA file formats the Flux service accepts, from synthetic state dicts with each format's key names:
kohya (sd-scripts) and BFL (original Flux names, as ComfyUI saves them, with `lora_down`/`lora_up` or
`lora_A`/`lora_B`) on the tiny model, through the service, checked against the LoRA formula; the
same files at FLUX.1-dev's sizes (fused `linear1` split) against the full architecture on the meta
device; and what is refused, with the reason, as a 422 on `loras`."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save

from components import flux
from deployments.flux import FluxConfig, FluxService
from deployments.flux.lora_files import BFL, KOHYA, linear_shapes, prepare
from serve_app.errors import FieldError
from serve_app.service import RunContext
from tests.unit.test_flux_lora_t2i import TINY, generate, lora_request, pixels

RANK, ALPHA = 4, 2.0
# BFL module -> diffusers modules it maps to (several: a fused projection, split along its outputs)
Names = dict[str, tuple[str, ...]]
DOUBLE: Names = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn.proj": ("attn.to_out.0",),
          "img_mlp.0": ("ff.net.0.proj",), "img_mlp.2": ("ff.net.2",), "img_mod.lin": ("norm1.linear",),
          "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
          "txt_attn.proj": ("attn.to_add_out",), "txt_mlp.0": ("ff_context.net.0.proj",),
          "txt_mlp.2": ("ff_context.net.2",), "txt_mod.lin": ("norm1_context.linear",)}
SINGLE: Names = {"linear2": ("proj_out",), "modulation.lin": ("norm.linear",),
          "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
OTHER: Names = {"img_in": ("x_embedder",), "final_layer.linear": ("proj_out",),
         "final_layer.adaLN_modulation.1": ("norm_out.linear",),
         "guidance_in.in_layer": ("time_text_embed.guidance_embedder.linear_1",)}


def bfl_modules(shapes: dict[str, tuple[int, int]], fused_linear1: bool) -> dict[str, tuple[int, int, tuple[str, ...]]]:
    """BFL name -> (in, out, diffusers modules) for block 0 of each kind, sizes read off the model."""
    table: dict[str, tuple[int, int, tuple[str, ...]]] = {}
    groups: list[tuple[str, str, Names]] = [
        ("double_blocks.0.", "transformer_blocks.0.", DOUBLE),
        ("single_blocks.0.", "single_transformer_blocks.0.", SINGLE),
        ("", "", OTHER),
    ]
    for bfl_prefix, prefix, names in groups:
        for name, targets in names.items():
            if name == "linear1" and not fused_linear1:
                continue  # diffusers splits linear1 at FLUX.1's sizes only (3 x 3072 + 12288)
            modules = tuple(prefix + t for t in targets)
            table[bfl_prefix + name] = (shapes[modules[0]][0], sum(shapes[m][1] for m in modules), modules)
    return table


def lora_tensors(table: dict[str, tuple[int, int, Any]], seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {name: (torch.randn(RANK, i, generator=g), torch.randn(o, RANK, generator=g) * 0.5)
            for name, (i, o, _) in table.items()}


def kohya_file(tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> bytes:
    out: dict[str, torch.Tensor] = {}
    for name, (down, up) in tensors.items():
        key = "lora_unet_" + name.replace(".", "_")
        out |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": torch.tensor(ALPHA)}
    return save(out)


def bfl_file(tensors: dict[str, tuple[torch.Tensor, torch.Tensor]], names: tuple[str, str]) -> bytes:
    out: dict[str, torch.Tensor] = {}
    for name, (down, up) in tensors.items():
        key = f"diffusion_model.{name}"
        out |= {f"{key}.{names[0]}.weight": down, f"{key}.{names[1]}.weight": up, f"{key}.alpha": torch.tensor(ALPHA)}
    return save(out)


@pytest.fixture(scope="module")
def service() -> FluxService:
    return FluxService(FluxConfig.model_validate(TINY))


def test_kohya_and_bfl_files_load_as_the_lora_formula_says(service: FluxService) -> None:
    table = bfl_modules(service.shapes, fused_linear1=False)
    tensors = lora_tensors(table, seed=0)
    kohya = kohya_file(tensors)
    prepared = prepare(kohya, service.shapes)
    assert prepared.format == KOHYA and prepared.rank == RANK
    assert prepared.modules == {m for _, _, modules in table.values() for m in modules}  # embedders included
    base = pixels(generate(service, lora_request()))
    image = pixels(generate(service, lora_request((kohya, 1.0))))
    assert np.abs(image.astype(int) - base).max() > 10
    # every adapted module now computes W x + (alpha / rank) * up (down x), fused outputs split in order
    service.adapters.activate([(prepared.sha256, 1.0)])
    with torch.no_grad():
        for name, (down, up) in tensors.items():
            rows = 0
            for module in table[name][2]:
                layer = service.pipe.transformer.get_submodule(module)
                x = torch.randn(3, down.shape[1])
                out = layer.base_layer.out_features
                expected = (ALPHA / RANK) * (x @ down.T @ up[rows:rows + out].T)
                if module == "norm_out.linear":  # BFL orders (shift, scale), diffusers (scale, shift)
                    expected = torch.cat(expected.chunk(2, dim=1)[::-1], dim=1)
                delta = layer(x) - layer.base_layer(x)
                assert torch.allclose(delta, expected, rtol=1e-4, atol=1e-4), module
                rows += out
    for names in (("lora_down", "lora_up"), ("lora_A", "lora_B")):  # the same matrices with BFL's names
        bfl = bfl_file(tensors, names)
        assert prepare(bfl, service.shapes).format == BFL
        assert np.array_equal(pixels(generate(service, lora_request((bfl, 1.0)))), image)


def test_flux_dev_sized_files_fit_the_full_architecture() -> None:
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):  # FLUX.1-dev's layer sizes, one block of each kind, no memory
        model = FluxTransformer2DModel(**{**flux.FULL["transformer"], "num_layers": 1, "num_single_layers": 1})
    shapes = linear_shapes(model)
    table = bfl_modules(shapes, fused_linear1=True)
    tensors = lora_tensors(table, seed=1)
    for data in (kohya_file(tensors), bfl_file(tensors, ("lora_down", "lora_up"))):
        prepared = prepare(data, shapes)
        assert {"single_transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.proj_mlp",
                "x_embedder"} <= prepared.modules
        assert prepared.modules == {m for _, _, modules in table.values() for m in modules}
    dev_lora = save({"transformer.x_embedder.lora_A.weight": torch.zeros(RANK, 64),
                     "transformer.x_embedder.lora_B.weight": torch.zeros(3072, RANK)})
    with pytest.raises(FieldError, match="does not fit"):  # a FLUX.1-dev LoRA on the tiny model
        prepare(dev_lora, linear_shapes(flux.build_transformer("tiny", "meta", torch.float32)))


@pytest.mark.parametrize(("keys", "message"), [
    ({"double_blocks.0.processor.proj_lora1.down.weight": (4, 32)}, "unrecognised LoRA format"),  # XLabs
    ({"lora_transformer_x_embedder.lora_down.weight": (4, 16)}, "unrecognised LoRA format"),
    ({"lora_unet_img_in.lora_down.weight": (4, 16), "lora_unet_img_in.dora_scale": (1, 32)}, "DoRA"),
    ({"transformer.x_embedder.lokr_w1": (4, 4)}, "LoKr"),
    ({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 32)}, "text-encoder"),
    ({"transformer.x_embedder.lora_A.weight": (4, 32), "transformer.x_embedder.lora_B.weight": (32, 4)},
     "does not fit"),  # a control LoRA: a wider input than the model's
    ({"transformer.nowhere.lora_A.weight": (4, 32), "transformer.nowhere.lora_B.weight": (32, 4)}, "no Linear module"),
    ({"transformer.x_embedder.alpha": ()}, "no LoRA matrices"),
])
def test_other_files_are_refused_with_the_reason(service: FluxService, keys: dict[str, tuple[int, ...]],
                                                 message: str) -> None:
    data = save({k: torch.ones(shape) for k, shape in keys.items()})
    with pytest.raises(FieldError, match=message) as e:
        asyncio.run(service.generate_with_loras(lora_request((data, 1.0)), RunContext()))
    assert e.value.field == "loras"
    assert not service.adapters.has(hashlib.sha256(data).hexdigest())
