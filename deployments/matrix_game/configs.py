"""Matrix-Game 2.0 configs: the published ones (`full`) and scaled-down ones (`tiny`).

Facts carried over from SkyworkAI/Matrix-Game `Matrix-Game-2/` (upstream commit 3ceb311, read through a fork
that holds it): `configs/distilled_model/{universal,gta_drive,templerun}/config.json` (CausalWanModel kwargs)
and `configs/inference_yaml/inference_*.yaml` (sampler). Per mode they differ in `keyboard_dim_in` (4 / 2 / 7),
`enable_mouse` (templerun has none), `local_attn_size` (6 / 4 / 6 latent frames) and the distilled steps
(`[1000, 666, 333]`; templerun `[1000, 750, 500, 250]`); all use shift 5.0, 3 latent frames per block,
context noise 0 and 352x640 frames. The `config.json` files are also in the hub repo next to each
checkpoint; `dit_config_from_published` reads that format, so a local copy of the repo wins over the
values written here.

`tiny` keeps the block structure (3 latent frames per block, the same windows, 36 input channels, 4x
temporal / 8x spatial VAE compression, 12-frame action windows) with small widths and a 32x64 frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

Mode = Literal["universal", "gta_drive", "templerun"]
Preset = Literal["tiny", "full"]
MODES: tuple[Mode, ...] = ("universal", "gta_drive", "templerun")

HUB_ID = "Skywork/Matrix-Game-2.0"
VAE_FILE = "Wan2.1_VAE.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
CHECKPOINTS: dict[Mode, str] = {
    "universal": "base_distilled_model/base_distill.safetensors",
    "gta_drive": "gta_distilled_model/gta_keyboard2dim.safetensors",
    "templerun": "templerun_distilled_model/templerun_7dim_onlykey.safetensors",
}


@dataclass(frozen=True)
class ActionConfig:
    """The `action_config` of a CausalWanModel: which blocks carry an action module and its widths."""

    blocks: tuple[int, ...]
    keyboard_dim_in: int
    enable_mouse: bool
    enable_keyboard: bool = True
    mouse_dim_in: int = 2
    hidden_size: int = 128  # keyboard embedding width
    img_hidden_size: int = 1536  # = the DiT width
    keyboard_hidden_dim: int = 1024
    mouse_hidden_dim: int = 1024
    heads_num: int = 16
    rope_dim_list: tuple[int, int, int] = (8, 28, 28)
    rope_theta: float = 256.0
    vae_time_compression_ratio: int = 4
    windows_size: int = 3  # latent frames of action history per latent frame
    qk_norm: bool = True
    qkv_bias: bool = False
    rope_max_frames: int = 7500  # the published action RoPE table length (latent frames)

    @property
    def window_frames(self) -> int:
        """Video frames of action history seen by one latent frame (12 published)."""
        return self.vae_time_compression_ratio * self.windows_size


@dataclass(frozen=True)
class DiTConfig:
    """CausalWanModel kwargs (image-to-world, no text branch)."""

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    local_attn_size: int  # latent frames in the self-attention window (the block itself included)
    action: ActionConfig
    in_dim: int = 36  # 16 noise + 4 mask + 16 image-condition latent channels
    out_dim: int = 16
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    image_dim: int = 1280  # CLIP hidden width fed to `img_emb`
    eps: float = 1e-6
    sink_size: int = 0
    rope_max_frames: int = 1024  # the published DiT RoPE table length (latent frames)
    num_frame_per_block: int = 3

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


@dataclass(frozen=True)
class SamplerConfig:
    """The distilled few-step flow-matching sampler (`inference_*.yaml`)."""

    denoising_steps: tuple[int, ...] = (1000, 666, 333)
    shift: float = 5.0
    num_train_timesteps: int = 1000
    warp_denoising_step: bool = True
    context_noise: int = 0


@dataclass(frozen=True)
class VideoGeometry:
    """Frame size and the VAE's compression (Wan 2.1: 8x spatial, 4x temporal)."""

    height: int
    width: int
    spatial_ratio: int = 8
    temporal_ratio: int = 4

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.height // self.spatial_ratio, self.width // self.spatial_ratio


@dataclass(frozen=True)
class ModeSpec:
    """Everything one mode needs: its DiT config, sampler and checkpoint path in the hub repo."""

    mode: Mode
    dit: DiTConfig
    sampler: SamplerConfig
    checkpoint: str


# --- published configs.json (verbatim values; `_class_name` etc. dropped) -------------------------
_ACTION_COMMON: dict[str, Any] = {
    "blocks": list(range(15)), "enable_keyboard": True, "heads_num": 16, "hidden_size": 128,
    "img_hidden_size": 1536, "keyboard_hidden_dim": 1024, "patch_size": [1, 2, 2], "qk_norm": True,
    "qkv_bias": False, "rope_dim_list": [8, 28, 28], "rope_theta": 256, "vae_time_compression_ratio": 4,
    "windows_size": 3,
}
_MOUSE: dict[str, Any] = {"enable_mouse": True, "mouse_dim_in": 2, "mouse_hidden_dim": 1024,
                          "mouse_qk_dim_list": [8, 28, 28]}
_DIT_COMMON: dict[str, Any] = {
    "dim": 1536, "eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256, "in_dim": 36, "inject_sample_info": False,
    "model_type": "i2v", "num_heads": 12, "num_layers": 30, "out_dim": 16, "sink_size": 0, "text_len": 512,
}
PUBLISHED_CONFIGS: dict[Mode, dict[str, Any]] = {
    "universal": {**_DIT_COMMON, "local_attn_size": 6,
                  "action_config": {**_ACTION_COMMON, **_MOUSE, "keyboard_dim_in": 4}},
    "gta_drive": {**_DIT_COMMON, "local_attn_size": 4,
                  "action_config": {**_ACTION_COMMON, **_MOUSE, "keyboard_dim_in": 2}},
    "templerun": {**_DIT_COMMON, "local_attn_size": 6,
                  "action_config": {**_ACTION_COMMON, "enable_mouse": False, "keyboard_dim_in": 7}},
}
PUBLISHED_STEPS: dict[Mode, tuple[int, ...]] = {
    "universal": (1000, 666, 333), "gta_drive": (1000, 666, 333), "templerun": (1000, 750, 500, 250),
}
FULL_GEOMETRY = VideoGeometry(height=352, width=640)
TINY_GEOMETRY = VideoGeometry(height=32, width=64)


def dit_config_from_published(cfg: dict[str, Any]) -> DiTConfig:
    """A `DiTConfig` from a published `config.json` dict.

    Raises:
        ValueError: the config is not an image-to-world CausalWanModel this code can run.
    """
    if cfg.get("model_type", "i2v") != "i2v":
        raise ValueError(f"model_type {cfg.get('model_type')!r} is not supported (only 'i2v')")
    act = cfg.get("action_config") or {}
    if not act:
        raise ValueError("config has no action_config")
    if list(act.get("patch_size", [1, 2, 2])) != list(cfg.get("patch_size", [1, 2, 2])):
        raise ValueError("action_config.patch_size must equal the DiT patch_size")
    action = ActionConfig(
        blocks=tuple(int(b) for b in act["blocks"]), keyboard_dim_in=int(act["keyboard_dim_in"]),
        enable_mouse=bool(act.get("enable_mouse", True)), enable_keyboard=bool(act.get("enable_keyboard", True)),
        mouse_dim_in=int(act.get("mouse_dim_in", 2)), hidden_size=int(act["hidden_size"]),
        img_hidden_size=int(act["img_hidden_size"]), keyboard_hidden_dim=int(act["keyboard_hidden_dim"]),
        mouse_hidden_dim=int(act.get("mouse_hidden_dim", 1024)), heads_num=int(act["heads_num"]),
        rope_dim_list=tuple(int(d) for d in act.get("mouse_qk_dim_list", act["rope_dim_list"])),  # type: ignore[arg-type]
        rope_theta=float(act["rope_theta"]), vae_time_compression_ratio=int(act["vae_time_compression_ratio"]),
        windows_size=int(act["windows_size"]), qk_norm=bool(act.get("qk_norm", True)),
        qkv_bias=bool(act.get("qkv_bias", False)),
    )
    return DiTConfig(
        dim=int(cfg["dim"]), ffn_dim=int(cfg["ffn_dim"]), num_heads=int(cfg["num_heads"]),
        num_layers=int(cfg["num_layers"]), local_attn_size=int(cfg["local_attn_size"]), action=action,
        in_dim=int(cfg.get("in_dim", 36)), out_dim=int(cfg.get("out_dim", 16)), freq_dim=int(cfg.get("freq_dim", 256)),
        patch_size=tuple(int(p) for p in cfg.get("patch_size", (1, 2, 2))),  # type: ignore[arg-type]
        eps=float(cfg.get("eps", 1e-6)), sink_size=int(cfg.get("sink_size", 0)),
    )


def _tiny_dit(full: DiTConfig) -> DiTConfig:
    """`full` scaled down: 4 layers (actions in the first 2), width 64, the same windows and channels."""
    action = replace(
        full.action, blocks=(0, 1), hidden_size=8, img_hidden_size=64, keyboard_hidden_dim=32,
        mouse_hidden_dim=32, heads_num=4, rope_dim_list=(4, 2, 2),
    )
    return replace(full, dim=64, ffn_dim=128, num_heads=2, num_layers=4, image_dim=32, action=action)


@dataclass(frozen=True)
class PresetSpec:
    """A preset's configs for every part."""

    geometry: VideoGeometry
    modes: dict[Mode, ModeSpec]
    clip: dict[str, Any]
    vae: dict[str, Any] = field(default_factory=dict)


def mode_spec(mode: Mode, dit: DiTConfig) -> ModeSpec:
    return ModeSpec(mode=mode, dit=dit, sampler=SamplerConfig(denoising_steps=PUBLISHED_STEPS[mode]),
                    checkpoint=CHECKPOINTS[mode])


# transformers.CLIPVisionConfig kwargs. Full: open-clip xlm-roberta-large ViT-H/14's visual tower as Wan
# builds it (`clip_xlm_roberta_vit_h_14`: 224 px, patch 14, width 1280, 32 layers, 16 heads, mlp ratio 4,
# exact GELU, LayerNorm eps 1e-5, a 1280x1024 projection `head`).
CLIP_CONFIGS: dict[Preset, dict[str, Any]] = {
    "full": {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
             "image_size": 224, "patch_size": 14, "projection_dim": 1024, "hidden_act": "gelu",
             "layer_norm_eps": 1e-5},
    "tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
             "image_size": 28, "patch_size": 14, "projection_dim": 16, "hidden_act": "gelu", "layer_norm_eps": 1e-5},
}
# diffusers.AutoencoderKLWan kwargs (full = its defaults, which are Wan 2.1's VAE).
VAE_CONFIGS: dict[Preset, dict[str, Any]] = {
    "full": {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
             "temperal_downsample": [False, True, True]},
    "tiny": {"base_dim": 4, "z_dim": 16, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1,
             "temperal_downsample": [False, True, True]},
}


def preset_spec(preset: Preset) -> PresetSpec:
    """The configs of a preset, for every mode."""
    full = {mode: dit_config_from_published(PUBLISHED_CONFIGS[mode]) for mode in MODES}
    if preset == "full":
        return PresetSpec(FULL_GEOMETRY, {m: mode_spec(m, full[m]) for m in MODES}, CLIP_CONFIGS["full"],
                          VAE_CONFIGS["full"])
    return PresetSpec(TINY_GEOMETRY, {m: mode_spec(m, _tiny_dit(full[m])) for m in MODES}, CLIP_CONFIGS["tiny"],
                      VAE_CONFIGS["tiny"])
