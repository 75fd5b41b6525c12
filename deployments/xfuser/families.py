"""The model families xDiT (xfuser 0.7) parallelises, what each supports, and the layout rules.

A layout is `pipefusion x ulysses x ring x (2 if cfg else 1)` GPUs. It must use exactly the
replica's GPUs, and the model must support each kind of parallelism it names:
- PipeFusion splits the transformer's blocks into stages and pipelines patches of the image through
  them (it reuses one step-old activations for the other patches after `warmup_steps` exact steps);
- Ulysses and Ring split the token sequence (sequence parallelism, exact up to rounding); Ulysses
  splits the attention heads too, so its degree must divide them;
- CFG parallel runs the conditional and unconditional branches on two GPUs (exact), so only for
  models that use classifier-free guidance.
SDXL is a UNet: xDiT parallelises it with CFG parallel only. SD3 with PipeFusion and HunyuanDiT with
Ulysses, Ring or PipeFusion need our fixes to xfuser 0.7 on diffusers 0.42 (`fixes.py`); HunyuanDiT's
long skip connections pair PipeFusion stage i with stage N-1-i, so its PipeFusion degree is 2 or 4.

The `native` backend is diffusers' own context parallelism (Ulysses and Ring only), for the models
whose transformer declares a context-parallel plan (Flux here).

Everything here is plain Python: config validation runs (and is tested) without xfuser or a GPU.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FamilyName = Literal["sd3", "flux", "pixart_alpha", "pixart_sigma", "hunyuandit", "sdxl"]


@dataclass(frozen=True)
class Family:
    """What the service needs to know about one model family."""

    name: str
    pipeline: str  # the diffusers pipeline class
    xfuser_pipeline: str  # its xfuser wrapper class
    pipefusion: bool
    sequence_parallel: bool
    cfg_parallel: bool
    uses_cfg: bool  # takes a negative prompt and a CFG scale
    heads: int  # attention heads of the released model's transformer
    patch_size: int  # latent pixels per token side (Flux's 2x2 packing counts as 2)
    default_steps: int
    default_guidance: float
    hub_names: tuple[str, ...]  # last path component of released hub ids
    max_sequence_length: int | None = None  # T5 tokens (passed to pipelines that take it)
    min_steps: int = 1  # PixArt's pipelines treat 1 step as a one-step (DMD) scheduler
    why_not: str = ""  # why a kind of parallelism xDiT lists is turned off here (measured)
    pipefusion_degrees: tuple[int, ...] = ()  # the PipeFusion degrees that work, when not all do
    native_cp: bool = False  # diffusers' native context parallelism has a plan for this transformer


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("sd3", "StableDiffusion3Pipeline", "xFuserStableDiffusion3Pipeline", True, True, True, True,
           heads=24, patch_size=2, default_steps=28, default_guidance=7.0,
           hub_names=("stable-diffusion-3-medium-diffusers",), max_sequence_length=256),
    Family("flux", "FluxPipeline", "xFuserFluxPipeline", True, True, False, False,
           heads=24, patch_size=2, default_steps=28, default_guidance=3.5,
           hub_names=("FLUX.1-dev", "FLUX.1-schnell"), max_sequence_length=512, native_cp=True),
    Family("pixart_alpha", "PixArtAlphaPipeline", "xFuserPixArtAlphaPipeline", True, True, True, True,
           heads=16, patch_size=2, default_steps=20, default_guidance=4.5,
           hub_names=("PixArt-XL-2-1024-MS", "PixArt-XL-2-512x512"), max_sequence_length=120, min_steps=2),
    Family("pixart_sigma", "PixArtSigmaPipeline", "xFuserPixArtSigmaPipeline", True, True, True, True,
           heads=16, patch_size=2, default_steps=20, default_guidance=4.5,
           hub_names=("PixArt-Sigma-XL-2-1024-MS", "PixArt-Sigma-XL-2-2K-MS"), max_sequence_length=300, min_steps=2),
    Family("hunyuandit", "HunyuanDiTPipeline", "xFuserHunyuanDiTPipeline", True, True, True, True,
           heads=16, patch_size=2, default_steps=50, default_guidance=5.0,
           hub_names=("HunyuanDiT-v1.2-Diffusers", "HunyuanDiT-v1.1-Diffusers"), pipefusion_degrees=(2, 4)),
    Family("sdxl", "StableDiffusionXLPipeline", "xFuserStableDiffusionXLPipeline", False, False, True, True,
           heads=0, patch_size=1, default_steps=30, default_guidance=5.0,
           hub_names=("stable-diffusion-xl-base-1.0",)),
)}

TINY_HEADS = 4  # the tiny presets' transformers have 4 heads (Ulysses up to 4)
VAE_SCALE = 8
SCHNELL_DEFAULTS = (4, 0.0)  # FLUX.1-schnell: 4 steps, no guidance


def heads_of(family: str, preset: str | None) -> int:
    """Attention heads of the model a config loads: the tiny preset's, else the released model's."""
    return TINY_HEADS if preset == "tiny" else FAMILIES[family].heads


def family_of(model_id: str) -> str | None:
    """The family of a released hub id, from its last path component (as the seed demo maps it)."""
    last = model_id.rstrip("/").split("/")[-1]
    for fam in FAMILIES.values():
        if last in fam.hub_names:
            return fam.name
    return None


class Layout(BaseModel):
    """xDiT's parallel degrees. All unset (the default) picks one automatically for the GPUs."""

    model_config = ConfigDict(extra="forbid")

    pipefusion_parallel_degree: int | None = Field(default=None, ge=1, description="PipeFusion stages.")
    ulysses_degree: int | None = Field(default=None, ge=1, description="Ulysses sequence parallelism.")
    ring_degree: int | None = Field(default=None, ge=1, description="Ring-attention sequence parallelism.")
    use_cfg_parallel: bool | None = Field(default=None, description="Conditional/unconditional on 2 GPUs.")
    num_pipeline_patch: int | None = Field(default=None, ge=1,
                                           description="PipeFusion patches (default: the PipeFusion degree).")

    @property
    def is_auto(self) -> bool:
        return (self.pipefusion_parallel_degree, self.ulysses_degree, self.ring_degree,
                self.use_cfg_parallel) == (None, None, None, None)

    @property
    def pp(self) -> int:
        return self.pipefusion_parallel_degree or 1

    @property
    def ulysses(self) -> int:
        return self.ulysses_degree or 1

    @property
    def ring(self) -> int:
        return self.ring_degree or 1

    @property
    def cfg(self) -> int:
        return 2 if self.use_cfg_parallel else 1

    @property
    def sp(self) -> int:
        return self.ulysses * self.ring

    @property
    def gpus(self) -> int:
        return self.pp * self.sp * self.cfg

    @property
    def patches(self) -> int:
        return self.num_pipeline_patch or self.pp

    def describe(self) -> str:
        return (f"pipefusion={self.pp} ulysses={self.ulysses} ring={self.ring} "
                f"cfg={'on' if self.use_cfg_parallel else 'off'}")


SINGLE = Layout(pipefusion_parallel_degree=1, ulysses_degree=1, ring_degree=1, use_cfg_parallel=False)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _problems(family: Family, layout: Layout, world_size: int, heads: int, native: bool = False) -> list[str]:
    out = []
    if layout.gpus != world_size:
        out.append(f"{layout.describe()} uses {layout.gpus} GPU(s) but the service has world_size={world_size}")
    if native:
        if not family.native_cp:
            out.append(f"backend native (diffusers context parallelism) has no plan for {family.name}; use xfuser")
        if layout.pp > 1 or layout.cfg > 1:
            out.append("backend native splits the sequence only (ulysses/ring): no PipeFusion, no CFG parallel")
    if layout.cfg > 1 and not family.cfg_parallel:
        out.append(f"{family.name} has no classifier-free guidance to split (use_cfg_parallel must be off)")
    why = f" ({family.why_not})" if family.why_not else ""
    if layout.pp > 1 and not family.pipefusion:
        out.append(f"{family.name} does not support PipeFusion{why}")
    if layout.pp > 1 and family.pipefusion_degrees and layout.pp not in family.pipefusion_degrees:
        out.append(f"{family.name}'s PipeFusion degree must be one of {', '.join(map(str, family.pipefusion_degrees))} "
                   "(its long skip connections pair stage i with stage N-1-i, so the stages must split the "
                   "blocks evenly: 40 in the released model, 4 in the tiny preset)")
    if layout.sp > 1 and not family.sequence_parallel:
        out.append(f"{family.name} does not support sequence parallelism (ulysses/ring){why}")
    if layout.ulysses > 1 and heads and heads % layout.ulysses:
        out.append(f"ulysses_degree={layout.ulysses} must divide the model's {heads} attention heads")
    if layout.num_pipeline_patch is not None and layout.pp == 1 and layout.num_pipeline_patch > 1:
        out.append("num_pipeline_patch needs pipefusion_parallel_degree > 1")
    return out


def valid_layouts(family: Family, world_size: int, heads: int, native: bool = False) -> list[Layout]:
    """Every layout of `world_size` GPUs the family supports (CFG parallel first, then Ulysses).

    `native`: the layouts diffusers' own context parallelism can run (Ulysses x Ring).
    """
    found = []
    for cfg, pp, ulysses in itertools.product((True, False), _divisors(world_size), _divisors(world_size)):
        rest = world_size // pp // ulysses // (2 if cfg else 1)
        if rest < 1 or pp * ulysses * rest * (2 if cfg else 1) != world_size:
            continue
        layout = Layout(pipefusion_parallel_degree=pp, ulysses_degree=ulysses, ring_degree=rest,
                        use_cfg_parallel=cfg)
        if not _problems(family, layout, world_size, heads, native):
            found.append(layout)
    found.sort(key=lambda lay: (-lay.cfg, lay.pp, -lay.ulysses))
    return found


def auto_layout(family: Family, world_size: int, heads: int, native: bool = False) -> Layout:
    """CFG parallel when the model uses guidance, then as much Ulysses as the heads allow, Ring for
    the rest; PipeFusion only when nothing else fits (it approximates)."""
    options = valid_layouts(family, world_size, heads, native)
    if not options:
        raise ValueError(f"{family.name} cannot be split over {world_size} GPUs by "
                         + ("diffusers' context parallelism" if native else "xDiT")
                         + (" (SDXL: CFG parallel on exactly 2 GPUs)" if family.name == "sdxl" else ""))
    exact = [lay for lay in options if lay.pp == 1]
    return (exact or options)[0]


def resolve_layout(family: Family, layout: Layout, world_size: int, heads: int, native: bool = False) -> Layout:
    """The layout to run: `layout` checked against the family and GPUs, or an automatic one.

    `native`: for diffusers' own context parallelism instead of xDiT.
    Raises ValueError saying what is wrong and which layouts would work.
    """
    if world_size == 1:
        if layout.gpus != 1:
            raise ValueError(f"{layout.describe()} needs {layout.gpus} GPUs but world_size=1")
        return SINGLE
    if layout.is_auto:
        return auto_layout(family, world_size, heads, native)
    problems = _problems(family, layout, world_size, heads, native)
    if problems:
        options = valid_layouts(family, world_size, heads, native)
        hint = ("; layouts that work: " + ", ".join(lay.describe() for lay in options)) if options else (
            f"; {family.name} cannot use {world_size} GPUs")
        raise ValueError(f"invalid parallel layout for {family.name}: " + "; ".join(problems) + hint)
    return Layout(pipefusion_parallel_degree=layout.pp, ulysses_degree=layout.ulysses, ring_degree=layout.ring,
                  use_cfg_parallel=layout.cfg > 1, num_pipeline_patch=layout.num_pipeline_patch)


def size_multiple(family: Family, layout: Layout) -> tuple[int, int]:
    """(height, width) multiples a request's size must have under `layout`.

    xDiT splits the latent rows between sequence-parallel ranks and PipeFusion patches, each split
    a whole number of tokens: height is a multiple of 8 · patch · sp · patches, width of 8 · patch.
    """
    token = VAE_SCALE * family.patch_size
    return token * layout.sp * layout.patches, token
