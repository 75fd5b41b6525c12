"""The bare Wan 2.1 T2V call that `wan_speed.py` and `served_vs_bare.py` both time: diffusers'
`WanPipeline` alone, with the service's defaults, to uint8 frames. Not a script: the two import it
(their own folder is on `sys.path` when run as `python bench/<script>.py`)."""

from __future__ import annotations

from typing import Any


def bare_video(pipe: Any, base_scheduler: Any, prompt: str, *, width: int, height: int, frames: int, steps: int,
               device: str) -> Any:
    """One video from the service's own `WanPipeline` (`engine.pipe`) and a fresh scheduler built from
    its base config, as the service's defaults (UniPC, flow shift 5, guidance 5, Wan's default negative
    prompt, seed 0): the frames as a uint8 numpy array [F, H, W, 3]."""
    import torch

    from components import wan

    pipe.scheduler = wan.make_scheduler(base_scheduler, "unipc", 5.0)
    out = pipe(prompt=prompt, negative_prompt=wan.DEFAULT_NEGATIVE_PROMPT, width=width, height=height,
               num_frames=frames, num_inference_steps=steps, guidance_scale=5.0,
               generator=torch.Generator(device=device).manual_seed(0), output_type="np")
    return (out.frames[0] * 255).round().astype("uint8")
