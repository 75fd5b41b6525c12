"""Conditional flow matching: sampling the DiT with torchdiffeq, and loading `cfm_model.pt`.

Sampling as published (`model/cfm.py`, `CFM.sample`): noise `y0 ~ N(0, I)` of `[frames, 64]` from the
seed; time grid `linspace(0, 1, steps)`, optionally bent by the sway rule
`t + coef * (cos(pi/2 t) - 1 + t)`; `odeint` with the requested fixed-grid method (`euler`,
`midpoint`, `rk4`, `implicit_adams`); classifier-free guidance `v + (v - v_null) * cfg_strength`,
where the null branch drops the lyrics and the known latents and uses the negative style embedding.
Both branches run as one batch of two. The text embeddings do not depend on t, so they are
computed once per song.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from deployments.diffrhythm.dit import DiT, DiTConfig

Solver = Literal["euler", "midpoint", "rk4", "implicit_adams"]
# Keys the published file may hold that are not parameters here: non-persistent buffers that some
# library versions saved. They are recomputed, never loaded.
RECOMPUTED_BUFFERS = ("rotary_emb.inv_freq", "rotary_emb.original_inv_freq", "text_embed.freqs_cis")


@dataclass(frozen=True)
class SongConditions:
    """What one song is generated from (batch 1)."""

    tokens: torch.Tensor  # [1, frames] frame-aligned lyric tokens
    style: torch.Tensor  # [1, 512]
    negative_style: torch.Tensor  # [1, 512]
    duration: float  # frames / the model's max_frames
    start_time: float = 0.0


def time_grid(steps: int, sway_coef: float | None, device: Any) -> torch.Tensor:
    """`steps` points from 0 to 1 (so `steps - 1` solver steps), bent by the sway rule when set."""
    t = torch.linspace(0, 1, steps, device=device, dtype=torch.float32)
    if sway_coef is not None:
        t = t + sway_coef * (torch.cos(torch.pi / 2 * t) - 1 + t)
    return t


@torch.inference_mode()
def sample(dit: DiT, song: SongConditions, *, steps: int, cfg_strength: float, method: Solver, seed: int,
           sway_coef: float | None = None, on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Generate latents `[1, frames, mel_dim]` (float32).

    Args:
        on_step: called with `(done, total)` as the solver reaches each grid point (`total =
            steps - 1`); it may raise (cancellation) to stop the solver.
    """
    from torchdiffeq import odeint

    param = next(dit.parameters())
    device, dtype = param.device, param.dtype
    frames = song.tokens.shape[1]
    mel = dit.config.mel_dim
    cond = torch.zeros(2, frames, mel, device=device, dtype=dtype)  # nothing known: generate the whole song
    tokens = song.tokens.to(device)
    text_embed = torch.cat([dit.text_embed(tokens), dit.text_embed(torch.zeros_like(tokens))]).to(dtype)
    style = torch.cat([song.style.to(device), song.negative_style.to(device)]).to(dtype)
    start = torch.full((2,), song.start_time, device=device)
    duration = torch.full((2,), song.duration, device=device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    y0 = torch.randn(1, frames, mel, generator=generator).to(device)
    grid = time_grid(steps, sway_coef, device)
    total, reached = len(grid) - 1, 0

    def velocity(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal reached
        done = int(torch.searchsorted(grid, t.reshape(1), right=True).item()) - 1
        if done > reached and on_step is not None:
            on_step(min(done, total), total)
        reached = max(reached, done)
        c = dit.conditioning(t.expand(2), start, duration).to(dtype)
        v, v_null = dit(y.to(dtype).expand(2, -1, -1), cond, text_embed, style, c).float().chunk(2)
        return v + (v - v_null) * cfg_strength  # type: ignore[no-any-return]

    with warnings.catch_warnings():  # implicit_adams warns when its corrector stops iterating; the step stands
        warnings.filterwarnings("ignore", message="Functional iteration did not converge")
        out = odeint(velocity, y0, grid, method=method)[-1]
    if on_step is not None and reached < total:
        on_step(total, total)
    return out  # type: ignore[no-any-return]


def read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    """The DiT's state dict from a published `cfm_model.pt` (or `.safetensors`), `transformer.` stripped.

    The file holds `{"model_state_dict": {...}}` (or an EMA trainer's `ema_model_state_dict`, whose
    `ema_model.` prefix and `initted`/`step` entries are dropped), read with `weights_only=True`.
    """
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        raw: Mapping[str, Any] = load_file(path)
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if "model_state_dict" in raw:
            raw = raw["model_state_dict"]
        elif "ema_model_state_dict" in raw:
            raw = {k.removeprefix("ema_model."): v for k, v in raw["ema_model_state_dict"].items()
                   if k not in ("initted", "step")}
    return {k.removeprefix("transformer."): v for k, v in raw.items() if k.startswith("transformer.")}


def config_for(state: Mapping[str, torch.Tensor]) -> DiTConfig:
    """The architecture a checkpoint holds, read from its shapes (heads are 64 wide, as published).

    A duration embedding means the 6144-frame model, its absence the 2048-frame one.
    """
    dim = state["proj_out.weight"].shape[1]
    embed = state["text_embed.text_embed.weight"]
    return DiTConfig(
        dim=dim,
        depth=len({k.split(".")[1] for k in state if k.startswith("transformer_blocks.")}),
        heads=dim // 64,
        ff_mult=state["transformer_blocks.0.mlp.gate_proj.weight"].shape[0] // dim,
        text_dim=embed.shape[1],
        conv_layers=len({k.split(".")[2] for k in state if k.startswith("text_embed.text_blocks.")}),
        mel_dim=state["proj_out.weight"].shape[0],
        text_num_embeds=embed.shape[0] - 1,
        max_frames=6144 if any(k.startswith("duration_time_embed.") for k in state) else 2048,
    )


def load_state(dit: DiT, state: Mapping[str, torch.Tensor]) -> None:
    """Load strictly: every parameter must be in `state` with its shape, and nothing else may be.

    Raises:
        ValueError: naming missing, unexpected or mis-shaped keys.
    """
    state = {k: v for k, v in state.items() if k not in RECOMPUTED_BUFFERS}
    own = dit.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        raise ValueError(f"checkpoint does not match the DiT: missing {missing[:8]} ({len(missing)}), unexpected "
                         f"{unexpected[:8]} ({len(unexpected)}), wrong shape {shapes[:8]} ({len(shapes)})")
    dit.load_state_dict(state, strict=True)
