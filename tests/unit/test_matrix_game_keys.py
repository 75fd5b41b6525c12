"""Matrix-Game 2.0 key compatibility with the published checkpoints, and the loader proven offline.

The synthetic state dicts below are written from the published facts, independently of the model code:
- the distilled DiTs: Wan 2.1 1.3B block names (`self_attn`/`cross_attn` q, k, v, o + q/k norms,
  `norm3`, `ffn.0`/`ffn.2`, `modulation`), `patch_embedding`, `time_embedding.{0,2}`,
  `time_projection.1`, `head.{head,modulation}`, `img_emb.proj.{0,1,3,4}` and the action modules of
  blocks 0-14 (`configs/distilled_model/*/config.json`). A dump of the GTA checkpoint
  (`gta_keyboard2dim.safetensors`, loaded by a third party) reports 1114 keys and 1,619,238,464
  parameters; the hub's file sizes (6.48 GB universal / gta, 6.03 GB templerun, float32) agree with
  the universal and templerun counts below.
- `Wan2.1_VAE.pth`: Wan's VAE module names (`encoder.downsamples.N.residual.{0,2,3,6}`, `middle`,
  `head`, `conv1`/`conv2`, `decoder.upsamples.N`), 126,892,531 parameters (the 508 MB file).
- the CLIP `.pth`: Wan's `XLMRobertaCLIP` (`visual.*` ViT-H/14, `textual.*`, `log_scale`).
Tensors are on the meta device: shapes only, nothing allocated.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from deployments.matrix_game.clip_vision import ClipImageEncoder, convert_wan_clip_state_dict
from deployments.matrix_game.configs import (
    CLIP_CONFIGS,
    MODES,
    PUBLISHED_CONFIGS,
    TINY_GEOMETRY,
    VAE_CONFIGS,
    DiTConfig,
    Mode,
    dit_config_from_published,
    preset_spec,
)
from deployments.matrix_game.dit import ActionInputs, CausalWanDiT
from deployments.matrix_game.models import build_world_models, load_world_models, save_published_layout

Shapes = dict[str, tuple[int, ...]]

KEYBOARD_DIMS: dict[Mode, int] = {"universal": 4, "gta_drive": 2, "templerun": 7}
PUBLISHED_PARAMS: dict[Mode, int] = {"universal": 1_619_242_304, "gta_drive": 1_619_238_464,
                                     "templerun": 1_508_715_584}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def published_dit_shapes(mode: Mode) -> Shapes:
    d, ffn, clip = 1536, 8960, 1280
    s: Shapes = {
        "patch_embedding.weight": (d, 36, 1, 2, 2), "patch_embedding.bias": (d,),
        "time_embedding.0.weight": (d, 256), "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d), "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d), "time_projection.1.bias": (6 * d,),
        "head.head.weight": (64, d), "head.head.bias": (64,), "head.modulation": (1, 2, d),
        "img_emb.proj.0.weight": (clip,), "img_emb.proj.0.bias": (clip,),
        "img_emb.proj.1.weight": (clip, clip), "img_emb.proj.1.bias": (clip,),
        "img_emb.proj.3.weight": (d, clip), "img_emb.proj.3.bias": (d,),
        "img_emb.proj.4.weight": (d,), "img_emb.proj.4.bias": (d,),
    }
    for i in range(30):
        b = f"blocks.{i}."
        s[b + "modulation"] = (1, 6, d)
        for attn in ("self_attn", "cross_attn"):
            for p in "qkvo":
                s[b + f"{attn}.{p}.weight"], s[b + f"{attn}.{p}.bias"] = (d, d), (d,)
            s[b + f"{attn}.norm_q.weight"], s[b + f"{attn}.norm_k.weight"] = (d,), (d,)
        s[b + "norm3.weight"], s[b + "norm3.bias"] = (d,), (d,)
        s[b + "ffn.0.weight"], s[b + "ffn.0.bias"] = (ffn, d), (ffn,)
        s[b + "ffn.2.weight"], s[b + "ffn.2.bias"] = (d, ffn), (d,)
        if i >= 15:
            continue
        a = b + "action_model."
        s[a + "keyboard_embed.0.weight"], s[a + "keyboard_embed.0.bias"] = (128, KEYBOARD_DIMS[mode]), (128,)
        s[a + "keyboard_embed.2.weight"], s[a + "keyboard_embed.2.bias"] = (128, 128), (128,)
        if mode != "templerun":
            s[a + "mouse_mlp.0.weight"], s[a + "mouse_mlp.0.bias"] = (1024, 2 * 12 + d), (1024,)
            s[a + "mouse_mlp.2.weight"], s[a + "mouse_mlp.2.bias"] = (1024, 1024), (1024,)
            s[a + "mouse_mlp.3.weight"], s[a + "mouse_mlp.3.bias"] = (1024,), (1024,)
            s[a + "t_qkv.weight"] = (3 * 1024, 1024)
            s[a + "img_attn_q_norm.weight"], s[a + "img_attn_k_norm.weight"] = (64,), (64,)
            s[a + "proj_mouse.weight"] = (d, 1024)
        s[a + "key_attn_q_norm.weight"], s[a + "key_attn_k_norm.weight"] = (64,), (64,)
        s[a + "mouse_attn_q.weight"] = (1024, d)
        s[a + "keyboard_attn_kv.weight"] = (2 * 1024, 128 * 12)
        s[a + "proj_keyboard.weight"] = (d, 1024)
    return s


def _residual(s: Shapes, prefix: str, cin: int, cout: int) -> None:
    s[prefix + "residual.0.gamma"] = (cin, 1, 1, 1)
    s[prefix + "residual.2.weight"], s[prefix + "residual.2.bias"] = (cout, cin, 3, 3, 3), (cout,)
    s[prefix + "residual.3.gamma"] = (cout, 1, 1, 1)
    s[prefix + "residual.6.weight"], s[prefix + "residual.6.bias"] = (cout, cout, 3, 3, 3), (cout,)
    if cin != cout:
        s[prefix + "shortcut.weight"], s[prefix + "shortcut.bias"] = (cout, cin, 1, 1, 1), (cout,)


def _middle(s: Shapes, side: str, dim: int) -> None:
    _residual(s, f"{side}.middle.0.", dim, dim)
    s[f"{side}.middle.1.norm.gamma"] = (dim, 1, 1)
    s[f"{side}.middle.1.to_qkv.weight"], s[f"{side}.middle.1.to_qkv.bias"] = (3 * dim, dim, 1, 1), (3 * dim,)
    s[f"{side}.middle.1.proj.weight"], s[f"{side}.middle.1.proj.bias"] = (dim, dim, 1, 1), (dim,)
    _residual(s, f"{side}.middle.2.", dim, dim)


def published_wan_vae_shapes() -> Shapes:
    s: Shapes = {"encoder.conv1.weight": (96, 3, 3, 3, 3), "encoder.conv1.bias": (96,)}
    # encoder.downsamples: per stage 2 residual blocks, then a resample (2d, 3d, 3d); none after the last
    layout = [(96, 96, "2d"), (96, 192, "3d"), (192, 384, "3d"), (384, 384, None)]
    i = 0
    for cin, cout, resample in layout:
        for j in range(2):
            _residual(s, f"encoder.downsamples.{i}.", cin if j == 0 else cout, cout)
            i += 1
        if resample:
            s[f"encoder.downsamples.{i}.resample.1.weight"] = (cout, cout, 3, 3)
            s[f"encoder.downsamples.{i}.resample.1.bias"] = (cout,)
            if resample == "3d":
                s[f"encoder.downsamples.{i}.time_conv.weight"] = (cout, cout, 3, 1, 1)
                s[f"encoder.downsamples.{i}.time_conv.bias"] = (cout,)
            i += 1
    _middle(s, "encoder", 384)
    s["encoder.head.0.gamma"] = (384, 1, 1, 1)
    s["encoder.head.2.weight"], s["encoder.head.2.bias"] = (32, 384, 3, 3, 3), (32,)
    s["conv1.weight"], s["conv1.bias"] = (32, 32, 1, 1, 1), (32,)
    s["conv2.weight"], s["conv2.bias"] = (16, 16, 1, 1, 1), (16,)
    s["decoder.conv1.weight"], s["decoder.conv1.bias"] = (384, 16, 3, 3, 3), (384,)
    _middle(s, "decoder", 384)
    # decoder.upsamples: per stage 3 residual blocks, then an upsample (3d, 3d, 2d) halving the width
    layout = [(384, 384, "3d"), (192, 384, "3d"), (192, 192, "2d"), (96, 96, None)]
    i = 0
    for cin, cout, resample in layout:
        for j in range(3):
            _residual(s, f"decoder.upsamples.{i}.", cin if j == 0 else cout, cout)
            i += 1
        if resample:
            s[f"decoder.upsamples.{i}.resample.1.weight"] = (cout // 2, cout, 3, 3)
            s[f"decoder.upsamples.{i}.resample.1.bias"] = (cout // 2,)
            if resample == "3d":
                s[f"decoder.upsamples.{i}.time_conv.weight"] = (2 * cout, cout, 3, 1, 1)
                s[f"decoder.upsamples.{i}.time_conv.bias"] = (2 * cout,)
            i += 1
    s["decoder.head.0.gamma"] = (96, 1, 1, 1)
    s["decoder.head.2.weight"], s["decoder.head.2.bias"] = (3, 96, 3, 3, 3), (3,)
    return s


def published_wan_clip_shapes() -> Shapes:
    d = 1280
    s: Shapes = {"visual.patch_embedding.weight": (d, 3, 14, 14), "visual.cls_embedding": (1, 1, d),
                 "visual.pos_embedding": (1, 257, d), "visual.pre_norm.weight": (d,), "visual.pre_norm.bias": (d,),
                 "visual.post_norm.weight": (d,), "visual.post_norm.bias": (d,), "visual.head": (d, 1024),
                 "log_scale": (), "textual.token_embedding.weight": (250002, 1024),
                 "textual.head.0.weight": (1024, 1024)}  # a sample of the text tower, which is not used
    for i in range(32):
        t = f"visual.transformer.{i}."
        for norm in ("norm1", "norm2"):
            s[t + f"{norm}.weight"], s[t + f"{norm}.bias"] = (d,), (d,)
        s[t + "attn.to_qkv.weight"], s[t + "attn.to_qkv.bias"] = (3 * d, d), (3 * d,)
        s[t + "attn.proj.weight"], s[t + "attn.proj.bias"] = (d, d), (d,)
        s[t + "mlp.0.weight"], s[t + "mlp.0.bias"] = (4 * d, d), (4 * d,)
        s[t + "mlp.2.weight"], s[t + "mlp.2.bias"] = (d, 4 * d), (d,)
    return s


def _meta(shapes: Shapes, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: torch.empty(v, device="meta") for k, v in shapes.items()}


def _count(shapes: Shapes) -> int:
    return sum(torch.Size(v).numel() for v in shapes.values())


@pytest.mark.parametrize("mode", MODES)
def test_distilled_checkpoint_keys_load_strictly(mode: Mode) -> None:
    shapes = published_dit_shapes(mode)
    assert _count(shapes) == PUBLISHED_PARAMS[mode]
    if mode == "gta_drive":
        assert len(shapes) == 1114
    with torch.device("meta"):
        model = CausalWanDiT(dit_config_from_published(PUBLISHED_CONFIGS[mode]))
    result = model.load_state_dict(_meta(shapes), strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[mode]


def test_checkpoint_saved_with_a_wrapper_prefix_loads_too() -> None:
    from deployments.matrix_game.models import strip_wrapper_prefix

    with torch.device("meta"):
        model = CausalWanDiT(dit_config_from_published(PUBLISHED_CONFIGS["templerun"]))
    state = strip_wrapper_prefix(_meta(published_dit_shapes("templerun"), prefix="model."))
    model.load_state_dict(state, strict=True, assign=True)


def test_full_presets_have_the_published_parameter_counts() -> None:
    spec = preset_spec("full")
    with torch.device("meta"):
        for mode in MODES:
            assert sum(p.numel() for p in CausalWanDiT(spec.modes[mode].dit).parameters()) == PUBLISHED_PARAMS[mode]
        clip = ClipImageEncoder(CLIP_CONFIGS["full"])
    visual = {k: v for k, v in published_wan_clip_shapes().items() if k.startswith("visual.")}
    assert sum(p.numel() for p in clip.parameters()) == _count(visual) == 632_076_800


def test_wan_vae_file_keys_load_strictly_into_autoencoder_kl_wan() -> None:
    from diffusers import AutoencoderKLWan

    from deployments.matrix_game.vae import convert_wan_vae_state_dict, to_wan_vae_state_dict

    shapes = published_wan_vae_shapes()
    assert _count(shapes) == 126_892_531
    with torch.device("meta"):
        vae: Any = AutoencoderKLWan(**VAE_CONFIGS["full"])
    result = vae.load_state_dict(convert_wan_vae_state_dict(_meta(shapes)), strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(to_wan_vae_state_dict(vae.state_dict())) == set(shapes)
    with pytest.raises(KeyError):
        convert_wan_vae_state_dict({"encoder.unknown.weight": torch.empty(1)})


def test_wan_clip_file_visual_tower_loads_strictly() -> None:
    shapes = published_wan_clip_shapes()
    with torch.device("meta"):
        clip = ClipImageEncoder(CLIP_CONFIGS["full"])
    result = clip.load_state_dict(convert_wan_clip_state_dict(_meta(shapes)), strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    with pytest.raises(KeyError):
        convert_wan_clip_state_dict({"vision.head": torch.empty(1)})


def _without_unused_mouse(cfg: DiTConfig) -> DiTConfig:
    if cfg.action.enable_mouse:
        return cfg
    return replace(cfg, action=replace(cfg.action, mouse_dim_in=0, mouse_hidden_dim=0))


def test_tiny_models_saved_in_the_published_layout_load_back(tmp_path: Path) -> None:
    """The prod loader (published file names and formats, key conversions) on a tiny copy, offline."""
    modes: list[Mode] = ["universal", "templerun"]
    built = build_world_models("tiny", modes, seed=3)
    root = save_published_layout(built, tmp_path / "Matrix-Game-2.0")
    assert (root / "base_distilled_model" / "base_distill.safetensors").is_file()
    assert (root / "templerun_distilled_model" / "config.json").is_file()
    spec = preset_spec("tiny")
    loaded = load_world_models(str(root), modes, device="cpu", dtype=torch.float32, local_files_only=True,
                               geometry=TINY_GEOMETRY, clip_config=spec.clip, vae_config=spec.vae)
    for mode in modes:
        # config.json read back (a mode without mouse writes no mouse widths)
        assert _without_unused_mouse(loaded.specs[mode].dit) == _without_unused_mouse(built.specs[mode].dit)
        for key, value in built.dits[mode].state_dict().items():
            assert torch.equal(loaded.dits[mode].state_dict()[key], value), key
    for key, value in built.vae.state_dict().items():
        assert torch.equal(loaded.vae.state_dict()[key], value), key
    image = torch.rand(1, 3, 32, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.clip(image), built.clip(image))
        dit, cfg = loaded.dits["universal"], loaded.specs["universal"].dit
        x = torch.randn(1, 16, 3, 4, 8)
        actions = ActionInputs(torch.zeros(1, 3, 12, 4), torch.zeros(1, 3, 12, 2))
        args = (x, torch.zeros(1, 20, 3, 4, 8), torch.full((1, 3), 500.0), torch.randn(1, 5, cfg.image_dim), actions)
        torch.testing.assert_close(dit.forward_sequence(*args), built.dits["universal"].forward_sequence(*args))


def test_missing_checkpoint_names_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"layout of Skywork/Matrix-Game-2\.0"):
        load_world_models(str(tmp_path), ["universal"], device="cpu", dtype=torch.float32)
