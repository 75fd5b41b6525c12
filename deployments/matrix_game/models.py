"""Loading and building Matrix-Game 2.0's models: one causal DiT per mode, the Wan VAE and the CLIP tower.

- `load_world_models(repo, ...)`: the published layout of `Skywork/Matrix-Game-2.0` (a hub id, read with
  `huggingface_hub.hf_hub_download`, or a local directory with the same files): per mode
  `<mode dir>/config.json` (optional; else the published values in `configs.py`) and the distilled
  `.safetensors` (keys loaded strictly; a leading `model.` on every key, as a training wrapper would
  save it, is accepted), `Wan2.1_VAE.pth` (Wan's key names, converted) or a diffusers-format VAE, and
  the CLIP `.pth` (visual tower only).
- `build_world_models(preset, ...)`: the same classes with seeded random weights (`tiny` / `full`).
- `save_published_layout(models, dir)`: writes models in the published file formats and names, so tests
  prove the loader offline on tiny models.
Nothing here imports the serving framework (the GPU benchmark runs it in a bare environment).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from deployments.matrix_game.clip_vision import ClipImageEncoder, convert_wan_clip_state_dict, to_wan_clip_state_dict
from deployments.matrix_game.configs import (
    CLIP_CONFIGS,
    CLIP_FILE,
    FULL_GEOMETRY,
    PUBLISHED_CONFIGS,
    VAE_CONFIGS,
    VAE_FILE,
    DiTConfig,
    Mode,
    ModeSpec,
    Preset,
    VideoGeometry,
    dit_config_from_published,
    mode_spec,
    preset_spec,
)
from deployments.matrix_game.dit import CausalWanDiT
from deployments.matrix_game.vae import convert_wan_vae_state_dict, to_wan_vae_state_dict


@dataclass
class WorldModels:
    """Everything a replica loads once; sessions borrow it."""

    geometry: VideoGeometry
    specs: dict[Mode, ModeSpec]
    dits: dict[Mode, CausalWanDiT]
    vae: Any  # diffusers.AutoencoderKLWan
    clip: ClipImageEncoder
    device: torch.device
    dtype: torch.dtype
    compiled: bool = field(default=False)

    @property
    def modes(self) -> list[Mode]:
        return list(self.dits)

    def compile(self, mode: str | None = None) -> None:
        """torch.compile each DiT block and the VAE decoder (shapes settle after the first blocks)."""
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        for dit in self.dits.values():
            for block in dit.blocks:
                block.compile(mode=mode, dynamic=False)
        self.vae.decoder.compile(mode=mode, dynamic=False)
        self.compiled = True


@contextlib.contextmanager
def _build_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _new_vae(config: dict[str, Any], device: torch.device, dtype: torch.dtype) -> Any:
    from diffusers import AutoencoderKLWan

    with _build_on(device, dtype):
        vae: Any = AutoencoderKLWan(**config)
    return vae.eval().requires_grad_(False)


def build_world_models(preset: Preset, modes: Sequence[Mode], device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32, vae_dtype: torch.dtype | None = None,
                       seed: int = 0) -> WorldModels:
    """The preset's models with seeded random weights, allocated on `device`."""
    spec, device = preset_spec(preset), torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with _build_on(device, dtype):
            dits = {m: CausalWanDiT(spec.modes[m].dit).eval().requires_grad_(False) for m in modes}
            clip = ClipImageEncoder(spec.clip).eval().requires_grad_(False)
        vae = _new_vae(spec.vae, device, vae_dtype or dtype)
    return WorldModels(spec.geometry, {m: spec.modes[m] for m in modes}, dits, vae, clip, device, dtype)


# --- the published layout ----------------------------------------------------------------------------
def _resolve(repo: str, filename: str, revision: str | None, local_files_only: bool) -> Path:
    root = Path(repo).expanduser()
    if root.is_dir():
        path = root / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (expected the layout of Skywork/Matrix-Game-2.0)")
        return path
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, filename, revision=revision, local_files_only=local_files_only))


def _optional(repo: str, filename: str, revision: str | None, local_files_only: bool) -> Path | None:
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return _resolve(repo, filename, revision, local_files_only)
    except (FileNotFoundError, EntryNotFoundError, LocalEntryNotFoundError):
        return None


def strip_wrapper_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a `model.` prefix carried by every key (a training wrapper's name), else return `state`."""
    if state and all(k.startswith("model.") for k in state):
        return {k[len("model."):]: v for k, v in state.items()}
    return state


def load_dit(path: Path, cfg: DiTConfig, device: torch.device, dtype: torch.dtype) -> CausalWanDiT:
    """A distilled checkpoint (`.safetensors`, published keys) into a new `CausalWanDiT`, strictly.

    The CLIP width is not in `config.json` (the published code fixes it at 1280): it is read from
    `img_emb`'s shape.
    """
    from safetensors.torch import load_file

    state = strip_wrapper_prefix(load_file(str(path), device=str(device)))
    if "img_emb.proj.0.weight" in state:
        cfg = replace(cfg, image_dim=int(state["img_emb.proj.0.weight"].shape[0]))
    with _build_on(device, dtype):
        model = CausalWanDiT(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def load_world_models(repo: str, modes: Sequence[Mode], device: str | torch.device = "cuda",
                      dtype: torch.dtype = torch.bfloat16, *, revision: str | None = None,
                      local_files_only: bool = False, vae_dtype: torch.dtype | None = None,
                      vae_repo: str | None = None, geometry: VideoGeometry = FULL_GEOMETRY,
                      clip_config: dict[str, Any] | None = None,
                      vae_config: dict[str, Any] | None = None) -> WorldModels:
    """Published weights (hub id or local directory) for `modes`.

    Args:
        vae_repo: a diffusers-format Wan 2.1 VAE (e.g. `Wan-AI/Wan2.1-T2V-1.3B-Diffusers`, subfolder
            `vae`) instead of the repo's `Wan2.1_VAE.pth`.
        geometry, clip_config, vae_config: the published values unless a test loads tiny models.
    """
    device = torch.device(device)
    specs: dict[Mode, ModeSpec] = {}
    dits: dict[Mode, CausalWanDiT] = {}
    for mode in modes:
        published = mode_spec(mode, dit_config_from_published(PUBLISHED_CONFIGS[mode]))
        config_path = _optional(repo, str(Path(published.checkpoint).parent / "config.json"), revision,
                                local_files_only)
        cfg = dit_config_from_published(json.loads(config_path.read_text())) if config_path else published.dit
        dits[mode] = load_dit(_resolve(repo, published.checkpoint, revision, local_files_only), cfg, device, dtype)
        specs[mode] = ModeSpec(mode, dits[mode].cfg, published.sampler, published.checkpoint)

    vae_config = vae_config or VAE_CONFIGS["full"]
    if vae_repo is not None:
        from diffusers import AutoencoderKLWan

        kwargs: dict[str, Any] = {"revision": revision, "local_files_only": local_files_only}
        vae = AutoencoderKLWan.from_pretrained(vae_repo, subfolder="vae", torch_dtype=vae_dtype or dtype, **kwargs)
        vae = vae.to(device).eval().requires_grad_(False)
    else:
        vae = _new_vae(vae_config, device, vae_dtype or dtype)
        state = torch.load(_resolve(repo, VAE_FILE, revision, local_files_only), map_location="cpu", weights_only=True)
        vae.load_state_dict(convert_wan_vae_state_dict(state, int(vae_config["num_res_blocks"])), strict=True)

    with _build_on(device, dtype):
        clip = ClipImageEncoder(clip_config or CLIP_CONFIGS["full"])
    state = torch.load(_resolve(repo, CLIP_FILE, revision, local_files_only), map_location="cpu", weights_only=True)
    clip.load_state_dict(convert_wan_clip_state_dict(state), strict=True)
    return WorldModels(geometry, specs, dits, vae, clip.eval().requires_grad_(False), device, dtype)


def published_config(cfg: DiTConfig) -> dict[str, Any]:
    """A `DiTConfig` as the published `config.json` writes it."""
    a = cfg.action
    action: dict[str, Any] = {
        "blocks": list(a.blocks), "enable_keyboard": a.enable_keyboard, "enable_mouse": a.enable_mouse,
        "heads_num": a.heads_num, "hidden_size": a.hidden_size, "img_hidden_size": a.img_hidden_size,
        "keyboard_dim_in": a.keyboard_dim_in, "keyboard_hidden_dim": a.keyboard_hidden_dim,
        "patch_size": list(cfg.patch_size), "qk_norm": a.qk_norm, "qkv_bias": a.qkv_bias,
        "rope_dim_list": list(a.rope_dim_list), "rope_theta": a.rope_theta,
        "vae_time_compression_ratio": a.vae_time_compression_ratio, "windows_size": a.windows_size,
    }
    if a.enable_mouse:
        action.update(mouse_dim_in=a.mouse_dim_in, mouse_hidden_dim=a.mouse_hidden_dim,
                      mouse_qk_dim_list=list(a.rope_dim_list))
    return {"_class_name": "CausalWanModel", "action_config": action, "dim": cfg.dim, "eps": cfg.eps,
            "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "in_dim": cfg.in_dim, "inject_sample_info": False,
            "local_attn_size": cfg.local_attn_size, "model_type": "i2v", "num_heads": cfg.num_heads,
            "num_layers": cfg.num_layers, "out_dim": cfg.out_dim, "sink_size": cfg.sink_size, "text_len": 512,
            "patch_size": list(cfg.patch_size)}


def save_published_layout(models: WorldModels, directory: str | Path) -> Path:
    """Write `models` as the hub repo lays them out (safetensors DiTs, Wan-named `.pth` VAE and CLIP)."""
    from safetensors.torch import save_file

    root = Path(directory)
    for mode, dit in models.dits.items():
        path = root / models.specs[mode].checkpoint
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in dit.state_dict().items()}, str(path))
        (path.parent / "config.json").write_text(json.dumps(published_config(models.specs[mode].dit), indent=2))
    num_res_blocks = int(models.vae.config.num_res_blocks)
    torch.save(to_wan_vae_state_dict(models.vae.state_dict(), num_res_blocks), root / VAE_FILE)
    clip = to_wan_clip_state_dict(models.clip.state_dict())
    clip["log_scale"] = torch.tensor(2.659)  # the text tower's half of the file is not used
    torch.save(clip, root / CLIP_FILE)
    return root
