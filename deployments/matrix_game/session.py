"""`WorldSession`: one interactive Matrix-Game 2.0 stream, independent of any transport.

    session = WorldSession(models)
    session.start(seed_image, mode="universal", seed=0)
    session.set_action("w l")            # the latest action applies to the next block
    frames = session.next_block()        # uint8 [n, H, W, 3]: 9 frames first, then 12 per block

One block (3 latent frames): begin the block in the KV caches, take the condition latents (seed image
encoding and mask) and the action windows of its frames, run the distilled steps (flow -> x0, re-noise
to the next step's sigma), run the model once more on the clean x0 at timestep 0 so the caches hold
clean keys/values, then decode the block with the VAE's cache kept from the block before.

A stream ends after `max_latent_frames` latent frames (the published streaming demo allocates 360;
the DiT's RoPE table holds 1024): `next_block` then raises `StreamExhausted`. While paused, `next_block`
raises `SessionPaused`; resuming continues the same stream.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from deployments.matrix_game.actions import IDLE, Action, ActionHistory, parse_action
from deployments.matrix_game.configs import Mode
from deployments.matrix_game.dit import ActionInputs
from deployments.matrix_game.kv_cache import StreamCache
from deployments.matrix_game.models import WorldModels
from deployments.matrix_game.sampler import FewStepSampler
from deployments.matrix_game.vae import ConditionEncoder, StreamingDecoder


class StreamExhausted(Exception):
    """The stream reached its last latent frame."""


class SessionPaused(RuntimeError):
    """`next_block` was called while the session is paused."""


def prepare_image(image: Image.Image | np.ndarray, height: int, width: int) -> torch.Tensor:
    """Centre-crop to the output aspect ratio, resize (bilinear, antialiased) and scale to [-1, 1]: [1, 3, H, W]."""
    pil = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    pil = pil.convert("RGB")
    w, h = pil.size
    if h / w > height / width:
        crop_w, crop_h = w, int(w * height / width)
    else:
        crop_w, crop_h = int(h * width / height), h
    left, top = (w - crop_w) / 2, (h - crop_h) / 2
    pil = pil.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(pil, dtype=np.float32).copy()).permute(2, 0, 1)[None]
    return pixels / 127.5 - 1.0


@dataclass
class _Stream:
    mode: Mode
    cache: StreamCache
    condition: ConditionEncoder
    decoder: StreamingDecoder
    history: ActionHistory
    sampler: FewStepSampler
    generator: torch.Generator
    latent_hw: tuple[int, int]


class WorldSession:
    """One stream on shared `WorldModels` (one at a time per replica: the models hold no per-stream state)."""

    def __init__(self, models: WorldModels, *, max_latent_frames: int = 360, condition_max_frames: int = 64) -> None:
        limit = min(d.cfg.rope_max_frames for d in models.dits.values())
        if not 3 <= max_latent_frames <= limit:
            raise ValueError(f"max_latent_frames must be in 3..{limit}")
        self.models = models
        self.max_latent_frames = max_latent_frames
        self.condition_max_frames = condition_max_frames
        self._lock = threading.Lock()
        self._action: Action = IDLE
        self._paused = False
        self._stream: _Stream | None = None
        self.last_block_seconds = 0.0

    # --- control (any thread) ------------------------------------------------------------------------
    def set_action(self, action: Action | str) -> Action:
        """Make `action` (an Action or a `"<move> <look>"` string) the one the next block uses."""
        parsed = action if isinstance(action, Action) else parse_action(action)
        with self._lock:
            self._action = parsed
        return parsed

    @property
    def action(self) -> Action:
        with self._lock:
            return self._action

    def pause(self, paused: bool) -> None:
        with self._lock:
            self._paused = paused

    @property
    def paused(self) -> bool:
        with self._lock:
            return self._paused

    @property
    def started(self) -> bool:
        return self._stream is not None

    @property
    def mode(self) -> Mode | None:
        return self._stream.mode if self._stream else None

    @property
    def latent_frames(self) -> int:
        """Latent frames generated so far."""
        return self._stream.cache.blocks * self._stream.cache.block if self._stream else 0

    @property
    def exhausted(self) -> bool:
        s = self._stream
        return s is not None and self.latent_frames + s.cache.block > self.max_latent_frames

    # --- generation (one thread) ---------------------------------------------------------------------
    def start(self, seed_image: Image.Image | np.ndarray, mode: Mode = "universal", seed: int | None = None) -> None:
        """Begin a new stream from `seed_image` (any size: centre-cropped and resized); resets action and pause."""
        models = self.models
        if mode not in models.dits:
            raise ValueError(f"mode {mode!r} is not loaded (loaded: {', '.join(models.modes)})")
        geometry, dit = models.geometry, models.dits[mode]
        spec = models.specs[mode]
        with torch.inference_mode():
            image = prepare_image(seed_image, geometry.height, geometry.width).to(models.device)
            clip_tokens = models.clip(image.to(models.dtype))
            h, w = geometry.latent_hw
            frame_tokens = (h // dit.cfg.patch_size[1]) * (w // dit.cfg.patch_size[2])
            cache = dit.new_stream(clip_tokens, frame_tokens)
            condition = ConditionEncoder(models.vae, image, max_encoded_frames=self.condition_max_frames)
        generator = torch.Generator(models.device)
        generator.manual_seed(int(seed) if seed is not None else int(torch.seed() % 2**31))
        history = ActionHistory(dit.cfg.action, mode)
        self._stream = _Stream(mode, cache, condition, StreamingDecoder(models.vae), history,
                               FewStepSampler(spec.sampler), generator, (h, w))
        with self._lock:
            self._action, self._paused = IDLE, False

    def next_block(self) -> np.ndarray:
        """Generate and decode the next block: uint8 frames [n, H, W, 3].

        Raises:
            RuntimeError: `start` was not called.
            SessionPaused: the session is paused.
            StreamExhausted: the stream has no latent frames left.
        """
        s = self._stream
        if s is None:
            raise RuntimeError("start() the session first")
        if self.paused:
            raise SessionPaused("the session is paused")
        if self.exhausted:
            raise StreamExhausted(f"the stream ended after {self.latent_frames} latent frames")
        t0 = time.perf_counter()
        with torch.inference_mode():
            video = self._generate(s, self.action)
            frames = ((video[0].float().permute(1, 2, 3, 0) + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
            out = frames.cpu().numpy()
        self.last_block_seconds = time.perf_counter() - t0
        return out

    def _generate(self, s: _Stream, action: Action) -> torch.Tensor:
        models, dit = self.models, self.models.dits[s.mode]
        s.cache.begin_block()
        start, n = s.cache.start_frame, s.cache.block
        s.history.apply(action, start, n)
        keyboard, mouse = s.history.windows(start, n, models.device, models.dtype)
        actions = ActionInputs(keyboard=keyboard, mouse=mouse)
        cond = s.condition.latents(start, n).to(models.dtype)
        h, w = s.latent_hw
        shape = (1, dit.cfg.out_dim, n, h, w)

        def noise() -> torch.Tensor:
            return torch.randn(shape, generator=s.generator, device=models.device, dtype=torch.float32).to(models.dtype)

        x = noise()
        x0 = x
        steps = s.sampler.timesteps
        for i, t in enumerate(steps):
            flow = dit.forward_block(x, cond, torch.tensor([t], device=models.device), actions, s.cache)
            x0 = s.sampler.to_x0(x, flow, t)
            if i + 1 < len(steps):
                x = s.sampler.renoise(x0, noise(), steps[i + 1])
        # Clean keys/values for the blocks that follow.
        dit.forward_block(x0, cond, torch.tensor([s.sampler.context_timestep], device=models.device), actions, s.cache)
        return s.decoder.decode(x0)

    def close(self) -> None:
        """Drop the stream's caches (GPU memory comes back on the next allocation)."""
        self._stream = None
