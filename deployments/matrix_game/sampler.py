"""The distilled few-step flow-matching sampler of Matrix-Game 2.0.

Facts from the published `FlowMatchScheduler(shift=5.0, sigma_min=0.0, extra_one_step=True)` with
`set_timesteps(1000)` and `warp_denoising_step: true`: the 1000 training sigmas are 1 - i/1000 for
i = 0..999, shifted as s' = shift * s / (1 + (shift - 1) * s); timesteps are 1000 * s'. The configured
steps (e.g. 1000, 666, 333) index that table "warped": step n -> table[1000 - n] (a table with a final
0 appended), so 1000/666/333 become timesteps 1000, ~908.9, ~714.3 at shift 5.
One block: start from noise; at each step the model's flow prediction gives x0 = x_t - sigma_t * flow;
before the next step x0 is re-noised to that step's sigma with fresh noise:
x = (1 - sigma) * x0 + sigma * noise. The last x0 is the block's output.
"""

from __future__ import annotations

import torch

from deployments.matrix_game.configs import SamplerConfig


class FewStepSampler:
    """Timesteps and the x0 / re-noise arithmetic of one distilled sampler."""

    def __init__(self, cfg: SamplerConfig) -> None:
        n = cfg.num_train_timesteps
        sigmas = torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)[:-1]
        sigmas = cfg.shift * sigmas / (1 + (cfg.shift - 1) * sigmas)
        table = torch.cat([sigmas * n, torch.zeros(1, dtype=torch.float64)])
        steps = torch.tensor(cfg.denoising_steps, dtype=torch.long)
        if cfg.warp_denoising_step:
            if int(steps.min()) < 0 or int(steps.max()) > n:
                raise ValueError(f"denoising steps must lie in 0..{n}")
            self.timesteps = [float(t) for t in table[n - steps]]
        else:
            self.timesteps = [float(t) for t in steps]
        self.num_train_timesteps = n
        self.context_timestep = float(cfg.context_noise)

    def sigma(self, timestep: float) -> float:
        return timestep / self.num_train_timesteps

    def to_x0(self, x_t: torch.Tensor, flow: torch.Tensor, timestep: float) -> torch.Tensor:
        """Clean estimate from a flow prediction (computed in float64, as published)."""
        x0 = x_t.double() - self.sigma(timestep) * flow.double()
        return x0.to(x_t.dtype)

    def renoise(self, x0: torch.Tensor, noise: torch.Tensor, timestep: float) -> torch.Tensor:
        sigma = self.sigma(timestep)
        return ((1 - sigma) * x0.float() + sigma * noise.float()).to(x0.dtype)
