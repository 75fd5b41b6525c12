"""The Wan 2.1 VAE for Matrix-Game 2.0, on diffusers' `AutoencoderKLWan`, used as a stream.

- `StreamingDecoder` decodes latent blocks one after another and keeps the decoder's causal feature
  cache between calls, so block-by-block decoding equals decoding the whole clip at once (the first
  latent frame gives 1 video frame, every later one 4).
- `ConditionEncoder` makes the image-to-world conditioning the published pipeline builds: the VAE
  encoding of [seed image, then black (0) frames], plus 4 mask channels (1 on latent frame 0, else 0).
  It encodes lazily, one latent frame (4 video frames) at a time with the encoder's cache, and stops
  once a latent frame equals the previous one: the encoder's temporal reach is finite, so past it the
  zero frames encode to a constant latent, which is reused from then on.
- `convert_wan_vae_state_dict` maps the published `Wan2.1_VAE.pth` keys (Wan's own module names) to
  diffusers' names; `to_wan_vae_state_dict` is its inverse (to write test files in the published format).
Latents are normalised with the published per-channel mean/std (`AutoencoderKLWan`'s config).
"""

from __future__ import annotations

import re
from typing import Any

import torch


def _causal_convs(module: torch.nn.Module) -> int:
    return sum(type(m).__name__ == "WanCausalConv3d" for m in module.modules())


def _stats(vae: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, device=like.device, dtype=like.dtype).view(shape)
    return mean, std


class StreamingDecoder:
    """Latent blocks -> video frames in [-1, 1], with the decoder's causal cache kept across blocks."""

    def __init__(self, vae: Any) -> None:
        self.vae = vae
        self._cache: list[Any] = [None] * _causal_convs(vae.decoder)
        self._first = True

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, 16, F, h, w] (normalised) -> video [B, 3, N, H, W] (N = 4F, or 4F - 3 for the first block)."""
        dtype = self.vae.post_quant_conv.weight.dtype
        z = latents.to(dtype)
        mean, std = _stats(self.vae, z)
        x = self.vae.post_quant_conv(z * std + mean)
        frames = []
        for i in range(x.shape[2]):
            frames.append(self.vae.decoder(x[:, :, i:i + 1], feat_cache=self._cache, feat_idx=[0],
                                           first_chunk=self._first))
            self._first = False
        return torch.cat(frames, dim=2).clamp(-1.0, 1.0)


class ConditionEncoder:
    """The mask + image-condition latents [B, 20, F, h, w] of any latent frames of a stream."""

    def __init__(self, vae: Any, image: torch.Tensor, max_encoded_frames: int = 64,
                 rtol: float = 1e-3) -> None:
        """
        Args:
            vae: an `AutoencoderKLWan`.
            image: the seed image [B, 3, H, W] in [-1, 1].
            max_encoded_frames: latent frames encoded at most; later ones reuse the last (a bound on
                work in case the encoder's output never settles exactly).
            rtol: two latent frames count as equal when they differ by at most rtol * max |latent|.
        """
        self.vae = vae
        dtype = vae.quant_conv.weight.dtype
        self._image = image.to(dtype)[:, :, None]
        self._cache: list[Any] = [None] * _causal_convs(vae.encoder)
        self._latents: list[torch.Tensor] = []
        self._max = max_encoded_frames
        self._rtol = rtol
        self.settled = False

    @property
    def encoded_frames(self) -> int:
        return len(self._latents)

    def _encode_next(self) -> None:
        chunk = self._image if not self._latents else torch.zeros_like(self._image).expand(-1, -1, 4, -1, -1)
        out = self.vae.encoder(chunk, feat_cache=self._cache, feat_idx=[0])
        mu = self.vae.quant_conv(out)[:, : self.vae.config.z_dim]
        mean, std = _stats(self.vae, mu)
        latent = (mu - mean) / std
        if self._latents:
            prev = self._latents[-1]
            self.settled = bool((latent - prev).abs().max() <= self._rtol * prev.abs().max().clamp_min(1e-6))
        self._latents.append(latent)
        if len(self._latents) >= self._max:
            self.settled = True

    def latents(self, start: int, count: int) -> torch.Tensor:
        """Condition channels (4 mask + 16 image latent) of latent frames start .. start+count-1."""
        while not self.settled and len(self._latents) < start + count:
            self._encode_next()
        last = len(self._latents) - 1
        image = torch.cat([self._latents[min(i, last)] for i in range(start, start + count)], dim=2)
        mask = torch.zeros_like(image[:, :4])
        if start == 0:
            mask[:, :, 0] = 1.0
        return torch.cat([mask, image], dim=1)


# --- Wan2.1_VAE.pth <-> diffusers key names -------------------------------------------------------
_RESIDUAL = {"residual.0.gamma": "norm1.gamma", "residual.2.": "conv1.", "residual.3.gamma": "norm2.gamma",
             "residual.6.": "conv2.", "shortcut.": "conv_shortcut."}
_MIDDLE = {"0": "resnets.0", "1": "attentions.0", "2": "resnets.1"}


def _rename(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest.startswith(old):
            return new + rest[len(old):]
    return rest


def _convert_key(key: str, num_res_blocks: int) -> str:
    if m := re.fullmatch(r"conv([12])\.(weight|bias)", key):
        return f"{'quant_conv' if m[1] == '1' else 'post_quant_conv'}.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if m is None:
        raise KeyError(key)
    side, rest = m[1], m[2]
    if mm := re.fullmatch(r"conv1\.(weight|bias)", rest):
        return f"{side}.conv_in.{mm[1]}"
    if mm := re.fullmatch(r"head\.0\.gamma", rest):
        return f"{side}.norm_out.gamma"
    if mm := re.fullmatch(r"head\.2\.(weight|bias)", rest):
        return f"{side}.conv_out.{mm[1]}"
    if mm := re.fullmatch(r"middle\.([012])\.(.+)", rest):
        return f"{side}.mid_block.{_MIDDLE[mm[1]]}.{_rename(mm[2], _RESIDUAL)}"
    if side == "encoder" and (mm := re.fullmatch(r"downsamples\.(\d+)\.(.+)", rest)):
        return f"encoder.down_blocks.{mm[1]}.{_rename(mm[2], _RESIDUAL)}"
    if side == "decoder" and (mm := re.fullmatch(r"upsamples\.(\d+)\.(.+)", rest)):
        stage, j = divmod(int(mm[1]), num_res_blocks + 2)
        if j <= num_res_blocks:
            return f"decoder.up_blocks.{stage}.resnets.{j}.{_rename(mm[2], _RESIDUAL)}"
        return f"decoder.up_blocks.{stage}.upsamplers.0.{mm[2]}"
    raise KeyError(key)


def convert_wan_vae_state_dict(state: dict[str, torch.Tensor], num_res_blocks: int = 2) -> dict[str, torch.Tensor]:
    """Published `Wan2.1_VAE.pth` keys -> `AutoencoderKLWan` keys.

    Raises:
        KeyError: a key that is not part of Wan's VAE.
    """
    return {_convert_key(k, num_res_blocks): v for k, v in state.items()}


def to_wan_vae_state_dict(state: dict[str, torch.Tensor], num_res_blocks: int = 2) -> dict[str, torch.Tensor]:
    """`AutoencoderKLWan` keys -> the published `Wan2.1_VAE.pth` names (the inverse of the above)."""
    inverse_residual = {v: k for k, v in _RESIDUAL.items()}
    inverse_middle = {v: k for k, v in _MIDDLE.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(("quant_conv.", "post_quant_conv.")):
            name = ("conv1." if key.startswith("quant_conv.") else "conv2.") + key.split(".", 1)[1]
        elif m := re.fullmatch(r"(encoder|decoder)\.conv_in\.(.+)", key):
            name = f"{m[1]}.conv1.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.norm_out\.gamma", key):
            name = f"{m[1]}.head.0.gamma"
        elif m := re.fullmatch(r"(encoder|decoder)\.conv_out\.(.+)", key):
            name = f"{m[1]}.head.2.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.(resnets\.\d|attentions\.0)\.(.+)", key):
            name = f"{m[1]}.middle.{inverse_middle[m[2]]}.{_rename(m[3], inverse_residual)}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", key):
            name = f"encoder.downsamples.{m[1]}.{_rename(m[2], inverse_residual)}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            index = int(m[1]) * (num_res_blocks + 2) + int(m[2])
            name = f"decoder.upsamples.{index}.{_rename(m[3], inverse_residual)}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
            name = f"decoder.upsamples.{int(m[1]) * (num_res_blocks + 2) + num_res_blocks + 1}.{m[2]}"
        else:
            raise KeyError(key)
        out[name] = value
    return out
