"""The Flux LoRA training loop: rectified-flow loss, disjoint batches per rank, AdamW in two groups.

It runs in one process (unit tests) or on every rank of a torch.distributed group with the
transformer wrapped in DistributedDataParallel (`train_worker.py`). Per step and rank:

- samples: a permutation of the N images drawn from a generator seeded with `(seed, step)`, the
  same on every rank; rank r takes positions `[r*B, (r+1)*B)` of it, so the ranks' batches are
  disjoint whenever N >= B * world_size (the permutation is repeated when it is shorter);
- timesteps: `t = sigmoid(N(0, 1))` per sample (diffusers' `logit_normal` density with mean 0, std
  1, as in its Flux and SD3 training scripts), noise from a generator seeded per `(seed, rank)`;
- loss: `x_t = (1 - t) x0 + t noise`, the transformer predicts `noise - x0` from the packed latents
  (`timestep = t`, which the transformer scales by 1000 itself), float32 MSE;
- AdamW (betas 0.9 / 0.999, eps 1e-8, weight decay 0.1) with `lora_A` at `learning_rate` and
  `lora_B` at `learning_rate * b_up_factor`, and a diffusers learning-rate schedule. `steps` counts
  optimizer steps; each takes `gradient_accumulation_steps` micro-batches (DDP syncs on the last).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field

from deployments.flux_lora.lora import param_groups

LRScheduler = Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial"]
LR_SCHEDULERS: tuple[str, ...] = get_args(LRScheduler)  # diffusers' `get_scheduler` names (piecewise_constant left out)


@dataclass(frozen=True)
class TrainingParams:
    """One job's hyperparameters (fal's trainer's names and defaults)."""

    steps: int = 250
    learning_rate: float = 5e-4
    b_up_factor: float = 3.0
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    seed: int = 42
    lr_scheduler: LRScheduler = "constant"
    lr_warmup_steps: int = 0
    guidance_scale: float = 1.0
    weight_decay: float = 0.1
    fixed_timestep: float | None = None  # tests: one t for every sample instead of sampled ones


@dataclass(frozen=True)
class TrainingSet:
    """The dataset on the training device: latents `[N, C, h, w]`, T5 `[N, L, D]`, CLIP `[N, P]`."""

    latents: Any
    text_embeddings: Any
    pooled_embeddings: Any

    @property
    def num_samples(self) -> int:
        return int(self.latents.shape[0])


@dataclass(frozen=True)
class StepReport:
    """What one optimizer step reports (losses are means over the ranks' samples)."""

    step: int  # 1-based
    total: int
    loss: float
    avg_loss: float
    learning_rate: float


class TrainingStatus(BaseModel):
    """A stream frame (`type: training`), sent at least every 10 steps."""

    step: int = Field(description="Steps done.")
    loss: float = Field(description="This step's loss (mean over the GPUs).")
    avg_loss: float = Field(description="Mean loss so far.")
    learning_rate: float = Field(description="Learning rate of lora_A in this step.")
    progress: str = Field(description="`step/steps`, e.g. `12/250`.")

    @classmethod
    def of(cls, report: StepReport) -> TrainingStatus:
        return cls(step=report.step, loss=report.loss, avg_loss=report.avg_loss,
                   learning_rate=report.learning_rate, progress=f"{report.step}/{report.total}")


@dataclass
class LoopResult:
    """How the loop ended."""

    num_steps: int
    final_loss: float  # mean loss over all steps done (fal's `final_loss`)
    cancelled: bool = False
    step_seconds: list[float] = field(default_factory=list)
    first_indices: list[int] = field(default_factory=list)  # this rank's samples in step 1


def use_attention_that_trains(device: str) -> None:
    """Turn cuDNN's fused attention off on CUDA before training: it fails in the backward of the
    full-size Flux transformer (torch 2.11, H200: "mha_graph.execute(...) is_good()", then illegal
    memory accesses that surface as CUBLAS_STATUS_EXECUTION_FAILED). Flash and memory-efficient SDPA
    are unaffected. Process-wide: call it where the process exists to train (the trainer's ranks)."""
    if str(device).startswith("cuda"):
        import torch

        torch.backends.cuda.enable_cudnn_sdp(False)


def batch_indices(seed: int, micro_step: int, num_samples: int, batch_size: int, rank: int,
                  world_size: int) -> list[int]:
    """This rank's sample indices for one micro-batch (see the module docstring)."""
    import numpy as np

    rng = np.random.default_rng([seed, micro_step])
    needed = batch_size * world_size
    order = np.concatenate([rng.permutation(num_samples) for _ in range(math.ceil(needed / num_samples))])
    return [int(i) for i in order[rank * batch_size:(rank + 1) * batch_size]]


def rank_generator(seed: int, rank: int) -> Any:
    """A CPU generator for one rank's noise and timesteps, independent of the other ranks'."""
    import numpy as np
    import torch

    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0]))


def sample_timesteps(batch_size: int, generator: Any, fixed: float | None = None) -> Any:
    """`t` in (0, 1) per sample: sigmoid of a standard normal (diffusers' `logit_normal`)."""
    import torch
    from diffusers.training_utils import compute_density_for_timestep_sampling

    if fixed is not None:
        return torch.full((batch_size,), float(fixed))
    return compute_density_for_timestep_sampling("logit_normal", batch_size, logit_mean=0.0, logit_std=1.0,
                                                 generator=generator)


def flow_matching_loss(model: Any, guidance_embeds: bool, x0: Any, text: Any, pooled: Any, t: Any, noise: Any,
                       guidance_scale: float, dtype: Any) -> Any:
    """Rectified-flow loss of one batch: MSE between the prediction and `noise - x0` (float32)."""
    import torch
    import torch.nn.functional as F
    from diffusers import FluxPipeline

    b, c, h, w = x0.shape
    device = x0.device
    t_ = t.to(device=device, dtype=torch.float32).view(b, 1, 1, 1)
    x_t = (1.0 - t_) * x0 + t_ * noise
    packed = FluxPipeline._pack_latents(x_t, b, c, h, w).to(dtype)
    target = FluxPipeline._pack_latents(noise - x0, b, c, h, w)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, device, dtype)
    txt_ids = torch.zeros(text.shape[1], 3, device=device, dtype=dtype)
    guidance = torch.full((b,), guidance_scale, device=device, dtype=torch.float32) if guidance_embeds else None
    pred = model(hidden_states=packed, encoder_hidden_states=text.to(dtype), pooled_projections=pooled.to(dtype),
                 timestep=t.to(device=device, dtype=dtype), img_ids=img_ids, txt_ids=txt_ids, guidance=guidance,
                 return_dict=False)[0]
    return F.mse_loss(pred.float(), target.float())


def mean_over_ranks(value: Any) -> Any:
    """The mean of a scalar tensor over the process group (itself outside one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def train_loop(model: Any, transformer: Any, data: TrainingSet, params: TrainingParams, *, rank: int = 0,
               world_size: int = 1, dtype: Any = None, should_stop: Callable[[], bool] | None = None,
               on_step: Callable[[StepReport], None] | None = None) -> LoopResult:
    """Train the adapter of `transformer` (called through `model`: itself or its DDP wrapper).

    Args:
        dtype: compute dtype of the forward pass (the base weights'); below float32 the forward
            runs under autocast, with peft's input casting off so the float32 adapter weights run in
            `dtype` too and no float32 copies of activations are kept.
        should_stop: called before every step on every rank (a collective when distributed);
            True ends the loop with `cancelled`.
        on_step: called after every step with the step's report.
    """
    import torch
    from diffusers.optimization import get_scheduler
    from peft.helpers import disable_input_dtype_casting

    dtype = dtype or torch.float32
    device = data.latents.device
    optimizer = torch.optim.AdamW(param_groups(transformer, params.learning_rate, params.b_up_factor),
                                  betas=(0.9, 0.999), eps=1e-8, weight_decay=params.weight_decay)
    scheduler = get_scheduler(params.lr_scheduler, optimizer, num_warmup_steps=params.lr_warmup_steps,
                              num_training_steps=params.steps)
    generator = rank_generator(params.seed, rank)
    mixed = dtype != torch.float32
    guidance_embeds = bool(transformer.config.guidance_embeds)
    accum = params.gradient_accumulation_steps
    result = LoopResult(num_steps=0, final_loss=float("nan"))
    loss_sum = 0.0
    model.train()
    for step in range(params.steps):
        if should_stop is not None and should_stop():
            result.cancelled = True
            break
        started = time.perf_counter()
        learning_rate = float(optimizer.param_groups[0]["lr"])
        step_loss = torch.zeros((), device=device)
        for micro in range(accum):
            idx = batch_indices(params.seed, step * accum + micro, data.num_samples, params.batch_size, rank,
                                world_size)
            if step == 0 and micro == 0:
                result.first_indices = idx
            index = torch.tensor(idx, device=device)
            x0 = data.latents.index_select(0, index).float()
            noise = torch.randn(x0.shape, generator=generator).to(device)
            t = sample_timesteps(params.batch_size, generator, params.fixed_timestep)
            last = micro == accum - 1
            no_sync = getattr(model, "no_sync", None)
            sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
            with sync:
                with torch.autocast(device.type, dtype=dtype, enabled=mixed), \
                        disable_input_dtype_casting(transformer, active=mixed):
                    loss = flow_matching_loss(model, guidance_embeds, x0,
                                              data.text_embeddings.index_select(0, index),
                                              data.pooled_embeddings.index_select(0, index), t, noise,
                                              params.guidance_scale, dtype)
                (loss / accum).backward()
            step_loss += loss.detach() / accum
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(mean_over_ranks(step_loss).item())
        loss_sum += value
        result.num_steps = step + 1
        result.final_loss = loss_sum / result.num_steps
        result.step_seconds.append(time.perf_counter() - started)
        if on_step is not None:
            on_step(StepReport(step + 1, params.steps, value, result.final_loss, learning_rate))
    model.eval()
    return result
