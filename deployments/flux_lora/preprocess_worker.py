"""The per-rank worker of `/flux-preprocess`: caption, VAE-encode and text-encode a slice of the images.

Every rank gets the whole payload (the runner puts it in Ray's object store once; ranks on the
node read it without copying) and takes its own contiguous slice. Each rank captions its images
that have no sidecar caption (BLIP), prepends the trigger word, encodes the pixels with the Flux
VAE (`(latent - shift_factor) * scaling_factor`, as diffusers' Flux training scripts do) and the
prompts with T5 (512 tokens) and CLIP (pooled, 77 tokens), as `FluxPipeline.encode_prompt` does.
Rank 0 gathers every rank's rows (padded to one size, in the encoders' dtype, on the collective's
device: CUDA for NCCL, CPU for gloo) and writes the safetensors file (`data.encode_preprocessed`).
A rank with no images (fewer images than ranks) sends padding of the same dtype and shape.
"""

from __future__ import annotations

import math
from typing import Any

from deployments.flux_lora.data import T5_SEQUENCE_LENGTH, encode_preprocessed
from serve_app.distributed import DistributedWorker
from serve_app.models.source import ModelSource, build_or_load, resolve_dtype


def shard(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """`[start, stop)` of rank `rank`'s contiguous slice of `n` items (sizes differ by at most 1)."""
    return n * rank // world_size, n * (rank + 1) // world_size


def with_trigger(trigger_word: str, caption: str | None) -> str:
    """`"<trigger> <caption>"`; the trigger alone without a caption, and not twice when the caption
    already starts with it."""
    trigger, caption = trigger_word.strip(), (caption or "").strip()
    if not trigger or caption.split(" ", 1)[0] == trigger:
        return caption or trigger
    return f"{trigger} {caption}".strip()


def load_flux_encoders(model_id: str, kwargs: dict[str, Any], device: str, dtype: Any) -> dict[str, Any]:
    """The VAE, CLIP and T5 (with their tokenizers) from a FLUX.1 repo or local dir, by subfolder."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5Tokenizer

    clip: Any = CLIPTextModel
    t5: Any = T5EncoderModel
    return {
        "vae": AutoencoderKL.from_pretrained(model_id, subfolder="vae", torch_dtype=dtype, **kwargs).to(device).eval(),
        "text_encoder": clip.from_pretrained(model_id, subfolder="text_encoder", dtype=dtype,
                                             **kwargs).to(device).eval(),
        "tokenizer": CLIPTokenizer.from_pretrained(model_id, subfolder="tokenizer", **kwargs),
        "text_encoder_2": t5.from_pretrained(model_id, subfolder="text_encoder_2", dtype=dtype,
                                             **kwargs).to(device).eval(),
        # T5TokenizerFast in diffusers' terms: in transformers 5 every tokenizer is the fast one.
        "tokenizer_2": T5Tokenizer.from_pretrained(model_id, subfolder="tokenizer_2", **kwargs),
    }


class FluxPreprocessWorker(DistributedWorker):
    """Holds the Flux VAE, both text encoders and the captioner on this rank's device."""

    def setup(self, model: dict[str, Any], captioner: dict[str, Any] | None = None,  # type: ignore[override]
              dtype: str = "auto", caption_max_new_tokens: int = 40, caption_num_beams: int = 3, **_: Any) -> None:
        import torch

        from components import flux
        from deployments.flux_lora.captioner import Captioner

        device = str(self.device)
        dt = self.dtype = resolve_dtype(dtype, device)  # type: ignore[arg-type]

        def build(preset: str) -> dict[str, Any]:
            return {"vae": flux.build_vae(preset, device, dt), **flux.build_text_encoders(preset, device, dt)}

        parts = build_or_load(ModelSource.model_validate(model),
                              load=lambda mid, kw: load_flux_encoders(mid, kw, device, dt),
                              presets={"tiny": lambda: build("tiny"), "full": lambda: build("full")})
        self.vae, self.tokenizer, self.tokenizer_2 = parts["vae"], parts["tokenizer"], parts["tokenizer_2"]
        self.text_encoder, self.text_encoder_2 = parts["text_encoder"], parts["text_encoder_2"]
        self.captioner = None if captioner is None else Captioner(
            ModelSource.model_validate(captioner), device, dt, caption_max_new_tokens, caption_num_beams)
        self._torch = torch

    # --- encoders -------------------------------------------------------------------------------
    def _latents(self, pixels: Any, first_index: int, seed: int) -> Any:
        """`[B, H, W, 3]` uint8 → shifted, scaled latents; image i samples with seed + i."""
        torch = self._torch
        x = torch.from_numpy(pixels).to(self.device).permute(0, 3, 1, 2).to(self.dtype) / 127.5 - 1.0
        gens = [torch.Generator(device=self.device).manual_seed(seed + first_index + i) for i in range(len(x))]
        latents = self.vae.encode(x).latent_dist.sample(generator=gens)
        cfg = self.vae.config
        return (latents - (cfg.shift_factor or 0.0)) * cfg.scaling_factor

    def _text(self, prompts: list[str]) -> tuple[Any, Any]:
        """T5 `last_hidden_state` [B, 512, D] and CLIP `pooler_output` [B, D] (FluxPipeline's conventions)."""
        t5_ids = self.tokenizer_2(prompts, padding="max_length", max_length=T5_SEQUENCE_LENGTH, truncation=True,
                                  return_tensors="pt").input_ids
        t5 = self.text_encoder_2(t5_ids.to(self.device), output_hidden_states=False)[0]
        clip_ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt").input_ids
        pooled = self.text_encoder(clip_ids.to(self.device), output_hidden_states=False).pooler_output
        return t5.to(self.dtype), pooled.to(self.dtype)

    def _row_shapes(self, resolution: int) -> tuple[tuple[int, ...], ...]:
        side = resolution // 8
        return ((self.vae.config.latent_channels, side, side), (T5_SEQUENCE_LENGTH, self.text_encoder_2.config.d_model),
                (self.text_encoder.config.hidden_size,))

    # --- the request ----------------------------------------------------------------------------
    def __call__(self, streaming: bool = False, images: Any = None, captions: list[str | None] | None = None,
                 trigger_word: str = "", resolution: int = 512, batch_size: int = 4, seed: int = 0,
                 **_: Any) -> dict[str, Any] | None:
        """Encode this rank's slice of `images` ([N, res, res, 3] uint8) and gather on rank 0.

        Returns, on rank 0: `{"data": safetensors bytes, "captions": [...]}`; other ranks return
        None. A cancelled request raises `RequestCancelled` on every rank at the same batch.
        """
        import numpy as np
        from PIL import Image

        torch = self._torch
        if self.device.type == "cuda":
            # Calls run in the rank actor's threads, where the CUDA device set in `setup` does not
            # apply; the object collectives (gather_object) use the current device.
            torch.cuda.set_device(self.device)
        captions = list(captions or [])
        n = len(captions)
        start, stop = shard(n, self.rank, self.world_size)
        per_rank = math.ceil(n / self.world_size)
        steps = max(1, math.ceil(per_rank / batch_size))
        rows: list[list[Any]] = [[], [], []]
        prompts: list[str] = []
        with torch.inference_mode():
            for step in range(steps):  # the same count on every rank: the cancel agreement matches
                lo, hi = start + step * batch_size, min(start + (step + 1) * batch_size, stop)
                if lo < hi:
                    pixels = np.array(images[lo:hi], dtype=np.uint8)  # a writable copy of the shared slice
                    texts = captions[lo:hi]
                    missing = [i for i, c in enumerate(texts) if not c]
                    if missing and self.captioner is not None:
                        made = self.captioner([Image.fromarray(pixels[i]) for i in missing])
                        for i, caption in zip(missing, made, strict=True):
                            texts[i] = caption
                    batch_prompts = [with_trigger(trigger_word, c) for c in texts]
                    t5, pooled = self._text(batch_prompts)
                    for out, part in zip(rows, (self._latents(pixels, lo, seed), t5, pooled), strict=True):
                        out.append(part)
                    prompts += batch_prompts
                self.raise_if_cancelled()
                if streaming:
                    self.progress(step + 1, steps, "encoding")
            gathered = self._gather(rows, prompts, per_rank, resolution, n)
        if gathered is None:
            return None
        latents, t5, pooled, all_prompts = gathered
        data = encode_preprocessed(latents, t5, pooled, all_prompts, trigger_word, resolution)
        return {"data": data, "captions": all_prompts}

    def _gather(self, rows: list[list[Any]], prompts: list[str], per_rank: int, resolution: int,
                n: int) -> tuple[Any, Any, Any, list[str]] | None:
        """Rank 0 gets every rank's rows in image order (None elsewhere). Rows are padded to
        `per_rank` so every rank sends one tensor of one shape and dtype, whatever it holds."""
        import torch.distributed as dist

        torch = self._torch
        device = self._collective_device()
        mine = []
        for parts, shape in zip(rows, self._row_shapes(resolution), strict=True):
            block = torch.zeros((per_rank, *shape), dtype=self.dtype, device=device)
            if parts:
                got = torch.cat(parts).to(device)
                block[: len(got)] = got
            mine.append(block)
        if self.world_size == 1:
            blocks, all_prompts = [[b] for b in mine], [prompts]
        else:
            root = self.rank == 0
            blocks = [[torch.empty_like(b) for _ in range(self.world_size)] if root else [] for b in mine]
            for block, out in zip(mine, blocks, strict=True):
                dist.gather(block, gather_list=out if root else None, dst=0)
            all_prompts = [[] for _ in range(self.world_size)] if root else []
            dist.gather_object(prompts, all_prompts if root else None, dst=0)
            if not root:
                return None
        counts = [shard(n, r, self.world_size)[1] - shard(n, r, self.world_size)[0] for r in range(self.world_size)]
        full = [torch.cat([b[:c] for b, c in zip(parts, counts, strict=True)]).cpu() for parts in blocks]
        return full[0], full[1], full[2], [p for ps in all_prompts for p in ps]
