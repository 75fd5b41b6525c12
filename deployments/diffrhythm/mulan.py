"""MuQ-MuLan: text and music into one 512-d, l2-normalised style space (DiffRhythm's style input).

Written from the published model (tencent-ailab/MuQ, `muq_mulan/`): each branch is a pretrained
encoder, a projection, a small transformer head (pre-norm attention with l2-normalised queries and
keys times learned scales, GEGLU feed-forward), a mean over positions and a linear map to the latent.
- text: XLM-RoBERTa (transformers) -> last hidden state -> head (8 layers in MuQ-MuLan-large) -> 512.
- audio: a 10 s, 24 kHz mono clip -> MuQ (`muq.py`) -> 1024 -> 768 -> head (0 layers) -> 512.
Module names follow the published state dict (`mulan.text.model.*`, `mulan.audio.model.model.*`,
`mulan.text_to_latents`, ...). The config dict has the published `config.json` layout.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deployments.diffrhythm.muq import MUQ_LARGE, MUQ_TINY, MuQ

CLIP_SECONDS = 10
# MuQ-MuLan-large as in MuQ's published contrastive-learning recipe (`config/model/muq_mulan.yaml`).
MULAN_LARGE: dict[str, Any] = {
    "mulan": {"sr": 24000, "clip_secs": CLIP_SECONDS, "dim_latent": 512},
    "audio_model": {"name": "OpenMuQ/MuQ-large-msd-iter", "model_dim": 1024, "use_layer_idx": -1},
    "text_model": {"name": "xlm-roberta-base", "model_dim": None, "use_layer_idx": -1},
    "audio_transformer": {"dim": 768, "tf_depth": 0, "heads": 8, "dim_head": 64, "ff_mult": 4},
    "text_transformer": {"dim": 768, "tf_depth": 8, "heads": 8, "dim_head": 64, "ff_mult": 4},
}
MULAN_TINY: dict[str, Any] = {
    **MULAN_LARGE,
    "audio_model": {"name": "tiny-muq", "model_dim": 32, "use_layer_idx": -1},
    "text_model": {"name": "tiny-xlm-roberta", "model_dim": None, "use_layer_idx": -1},
    "audio_transformer": {"dim": 32, "tf_depth": 0, "heads": 2, "dim_head": 16, "ff_mult": 2},
    "text_transformer": {"dim": 32, "tf_depth": 1, "heads": 2, "dim_head": 16, "ff_mult": 2},
}
XLMR_BASE: dict[str, Any] = {"vocab_size": 250002, "hidden_size": 768, "num_hidden_layers": 12,
                             "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 514,
                             "type_vocab_size": 1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
XLMR_TINY: dict[str, Any] = {**XLMR_BASE, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                             "intermediate_size": 64}
PRESETS = {"tiny": (MULAN_TINY, MUQ_TINY, XLMR_TINY), "full": (MULAN_LARGE, MUQ_LARGE, XLMR_BASE)}


class BiaslessLayerNorm(nn.Module):
    """LayerNorm with a learned scale and no bias (`learned_gamma`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.learned_gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(x, x.shape[-1:], self.learned_gamma)


class Attention(nn.Module):
    """Pre-norm attention, queries/keys l2-normalised then scaled (`q_scale`, `k_scale`), times 8."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = BiaslessLayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, heads * dim_head * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        x = self.norm(x)
        q, k, v = (t.view(b, n, self.heads, -1).transpose(1, 2) for t in (self.to_q(x), *self.to_kv(x).chunk(2, -1)))
        q = nn.functional.normalize(q, dim=-1) * self.q_scale
        k = nn.functional.normalize(k, dim=-1) * self.k_scale
        out = nn.functional.scaled_dot_product_attention(q, k, v, scale=8.0)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))  # type: ignore[no-any-return]


class GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return nn.functional.gelu(gate) * x


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    hidden = int(dim * mult * 2 / 3)
    return nn.Sequential(BiaslessLayerNorm(dim), nn.Linear(dim, hidden * 2, bias=False), GEGLU(), nn.Dropout(0.0),
                         nn.Linear(hidden, dim, bias=False))


class Head(nn.Module):
    """The MuLan transformer head: residual attention and feed-forward layers (`transformer.layers`)."""

    def __init__(self, dim: int, tf_depth: int, heads: int, dim_head: int, ff_mult: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.ModuleList([Attention(dim, heads, dim_head), feed_forward(dim, ff_mult)]) for _ in range(tf_depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer[0](x) + x  # type: ignore[index]
            x = layer[1](x) + x  # type: ignore[index]
        return x


class AudioBranch(nn.Module):
    def __init__(self, config: dict[str, Any], muq_config: dict[str, Any]) -> None:
        super().__init__()
        head = config["audio_transformer"]
        self.model = MuQ(muq_config)
        self.aggregator = nn.Conv1d(25, 1, kernel_size=1)  # in the published weights; unused at inference
        self.transformer = Head(**head)
        self.proj = nn.Linear(config["audio_model"]["model_dim"], head["dim"])

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.proj(self.model(wav))).mean(dim=-2)  # type: ignore[no-any-return]


class TextBranch(nn.Module):
    def __init__(self, config: dict[str, Any], text_config: Any) -> None:
        from transformers import XLMRobertaModel

        super().__init__()
        head = config["text_transformer"]
        self.model = XLMRobertaModel(text_config)
        self.transformer = Head(**head)
        model_dim = config["text_model"].get("model_dim")
        self.proj = nn.Linear(model_dim, head["dim"]) if model_dim and model_dim != head["dim"] else nn.Identity()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.transformer(self.proj(hidden)).mean(dim=-2)  # type: ignore[no-any-return]


class MuLanModel(nn.Module):
    def __init__(self, config: dict[str, Any], muq_config: dict[str, Any], text_config: Any) -> None:
        super().__init__()
        latent = config["mulan"]["dim_latent"]
        self.audio = AudioBranch(config, muq_config)
        self.text = TextBranch(config, text_config)
        self.text_to_latents = nn.Linear(config["text_transformer"]["dim"], latent)
        self.audio_to_latents = nn.Linear(config["audio_transformer"]["dim"], latent)


class MuQMuLan(nn.Module):
    """Style embeddings from text (`embed_text`) or a 10 s, 24 kHz clip (`embed_audio`)."""

    def __init__(self, config: dict[str, Any], muq_config: dict[str, Any], text_config: Any, tokenizer: Any) -> None:
        super().__init__()
        self.config = config
        self.mulan = MuLanModel(config, muq_config, text_config)
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.inference_mode()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        """`[len(texts), 512]`, float32, unit norm."""
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=512)
        hidden = self.mulan.text(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))
        return nn.functional.normalize(self.mulan.text_to_latents(hidden).float(), dim=-1)

    @torch.inference_mode()
    def embed_audio(self, clip: torch.Tensor) -> torch.Tensor:
        """A `[samples]` 24 kHz mono clip (10 s) -> `[1, 512]`, float32, unit norm."""
        hidden = self.mulan.audio(clip[None].to(self.device))
        return nn.functional.normalize(self.mulan.audio_to_latents(hidden).float(), dim=-1)
