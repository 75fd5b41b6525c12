"""Kokoro-82M weights and voice packs: loaded from a hub id or local directory, or synthetic presets.

`tiny` keeps every class of the real model but shrinks what can shrink (PL-BERT, one layer, one
resblock); the decoder's channels are hard-coded in kokoro, so it stays ~59M parameters. `full` is
the published Kokoro-82M config. Both have seeded random weights, random voice packs, and the
duration predictor pinned to `FRAMES_PER_TOKEN` (75 ms per phoneme, about natural speech), so the
audio has a realistic length: random durations would give ~0.6 s per phoneme and make both tests
and the real-time-factor benchmark measure 8x too much audio.
"""

# ruff: noqa: RUF001  (the vocabulary is IPA: letters that look like ASCII ones are the point)
from __future__ import annotations

import copy
import math
import os
import tempfile
import warnings
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from serve_app.models.source import ModelSource, build_or_load

KOKORO_ID = "hexgrad/Kokoro-82M"
WEIGHTS_FILE = "kokoro-v1_0.pth"
SAMPLE_RATE = 24_000
FRAMES_PER_TOKEN = 3  # 3 x 25 ms; one frame is 600 samples at 24 kHz
VOICE_SHAPE = (510, 1, 256)  # one 256-d style vector per phoneme count (1..510)

# The published vocabulary of Kokoro-82M (config.json): phoneme -> token id.
VOCAB: dict[str, int] = {
    ";": 1, ":": 2, ",": 3, ".": 4, "!": 5, "?": 6, "—": 9, "…": 10, '"': 11, "(": 12, ")": 13, "“": 14,
    "”": 15, " ": 16, "\u0303": 17, "ʣ": 18, "ʥ": 19, "ʦ": 20, "ʨ": 21, "ᵝ": 22, "\uab67": 23, "A": 24,
    "I": 25, "O": 31, "Q": 33, "S": 35, "T": 36, "W": 39, "Y": 41, "ᵊ": 42, "a": 43, "b": 44, "c": 45,
    "d": 46, "e": 47, "f": 48, "h": 50, "i": 51, "j": 52, "k": 53, "l": 54, "m": 55, "n": 56, "o": 57,
    "p": 58, "q": 59, "r": 60, "s": 61, "t": 62, "u": 63, "v": 64, "w": 65, "x": 66, "y": 67, "z": 68,
    "ɑ": 69, "ɐ": 70, "ɒ": 71, "æ": 72, "β": 75, "ɔ": 76, "ɕ": 77, "ç": 78, "ɖ": 80, "ð": 81, "ʤ": 82,
    "ə": 83, "ɚ": 85, "ɛ": 86, "ɜ": 87, "ɟ": 90, "ɡ": 92, "ɥ": 99, "ɨ": 101, "ɪ": 102, "ʝ": 103,
    "ɯ": 110, "ɰ": 111, "ŋ": 112, "ɳ": 113, "ɲ": 114, "ɴ": 115, "ø": 116, "ɸ": 118, "θ": 119, "œ": 120,
    "ɹ": 123, "ɾ": 125, "ɻ": 126, "ʁ": 128, "ɽ": 129, "ʂ": 130, "ʃ": 131, "ʈ": 132, "ʧ": 133, "ʊ": 135,
    "ʋ": 136, "ʌ": 138, "ɣ": 139, "ɤ": 140, "χ": 142, "ʎ": 143, "ʒ": 147, "ʔ": 148, "ˈ": 156, "ˌ": 157,
    "ː": 158, "ʰ": 162, "ʲ": 164, "↓": 169, "→": 171, "↗": 172, "↘": 173, "ᵻ": 177,
}

# hexgrad/Kokoro-82M's config.json.
FULL_CONFIG: dict[str, Any] = {
    "vocab": VOCAB,
    "n_token": 178,
    "plbert": {"hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 2048,
               "max_position_embeddings": 512, "num_hidden_layers": 12, "dropout": 0.1},
    "hidden_dim": 512,
    "style_dim": 128,
    "n_layer": 3,
    "max_dur": 50,
    "dropout": 0.2,
    "text_encoder_kernel_size": 5,
    "n_mels": 80,
    "istftnet": {"upsample_kernel_sizes": [20, 12], "upsample_rates": [10, 6], "gen_istft_hop_size": 5,
                 "gen_istft_n_fft": 20, "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
                 "resblock_kernel_sizes": [3, 7, 11], "upsample_initial_channel": 512},
}

# The smallest model kokoro's hard-coded decoder allows (hidden_dim, style_dim and the decoder's
# initial channels must stay 512 / 128 / 512).
TINY_CONFIG: dict[str, Any] = {
    **FULL_CONFIG,
    "plbert": {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
               "max_position_embeddings": 512, "num_hidden_layers": 2, "dropout": 0.1},
    "n_layer": 1,
    "dropout": 0.0,  # inactive in eval anyway; torch warns about dropout on a one-layer LSTM
    "istftnet": {**FULL_CONFIG["istftnet"], "resblock_dilation_sizes": [[1, 3, 5]], "resblock_kernel_sizes": [3]},
}

PRESET_CONFIGS = {"tiny": TINY_CONFIG, "full": FULL_CONFIG}
# The parts of a KModel that kokoro's weight file holds, one state dict each.
MODEL_PARTS = ("bert", "bert_encoder", "predictor", "text_encoder", "decoder")


def _kmodel(repo_id: str, config: dict[str, Any] | str, weights: str) -> Any:
    from kokoro import KModel

    with warnings.catch_warnings():  # kokoro builds its decoder with torch's deprecated weight_norm
        warnings.filterwarnings("ignore", message=".*weight_norm", category=FutureWarning)
        return KModel(repo_id=repo_id, config=config, model=weights).eval()


def build_preset(preset: str, device: str) -> Any:
    """A KModel of a preset's config with random weights (call under a seeded RNG)."""
    import torch

    # KModel always loads a weight file; an empty one leaves the random initialisation as is.
    with tempfile.TemporaryDirectory() as tmp:
        empty = os.path.join(tmp, "empty.pth")
        torch.save({}, empty)
        model = _kmodel(KOKORO_ID, copy.deepcopy(PRESET_CONFIGS[preset]), empty)
    pin_durations(model, FRAMES_PER_TOKEN)
    return model.to(device)


def pin_durations(model: Any, frames: int) -> None:
    """Make the duration predictor give every token `frames` frames (speed 1.0)."""
    import torch

    proj = model.predictor.duration_proj.linear_layer
    max_dur = proj.out_features
    with torch.no_grad():
        proj.weight.zero_()
        # sum over max_dur bins of sigmoid(b) == frames
        proj.bias.fill_(math.log(frames / (max_dur - frames)))


def fetch(source: ModelSource, filename: str) -> str:
    """Path of `filename` in a local directory, or its hub download (cached; offline flags respected)."""
    if source.is_local_dir:
        path = Path(str(source.id)).expanduser() / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: a Kokoro directory holds config.json, the weight "
                                    "file and voices/<name>.pt")
        return str(path)
    from huggingface_hub import hf_hub_download

    return str(hf_hub_download(str(source.id), filename, **source.pretrained_kwargs()))


def load_model(source: ModelSource, weights_file: str, device: str) -> Any:
    """Kokoro from a hub id or local directory (published layout), or a synthetic preset."""

    def load(model_id: str, _: dict[str, Any]) -> Any:
        return _kmodel(model_id, fetch(source, "config.json"), fetch(source, weights_file)).to(device)

    return build_or_load(source, load=load, presets={p: partial(build_preset, p, device) for p in PRESET_CONFIGS})


def load_voices(source: ModelSource, names: Iterable[str]) -> dict[str, Any]:
    """Voice packs (tensors of shape `VOICE_SHAPE`) by name: `voices/<name>.pt`, or random for presets."""
    import torch

    names = list(names)
    if source.preset is not None:
        generator = torch.Generator().manual_seed(source.seed)
        return {name: 0.1 * torch.randn(VOICE_SHAPE, generator=generator) for name in names}
    return {name: torch.load(fetch(source, f"voices/{name}.pt"), map_location="cpu", weights_only=True)
            for name in names}

