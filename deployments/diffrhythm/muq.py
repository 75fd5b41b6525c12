"""MuQ, the music encoder inside MuQ-MuLan's audio branch, on transformers' Wav2Vec2-Conformer.

Written from the published MuQ model (tencent-ailab/MuQ, `muq/models/muq_model.py`): 24 kHz mono
-> mel power spectrogram (n_fft 2048, hop 240, 128 HTK mel bands) in dB, last frame dropped,
standardised with the training statistics -> two strided residual conv blocks (time / 4) and a
linear layer to the encoder width -> a Wav2Vec2-Conformer encoder (rotary positions) -> its last
hidden state. The mel front end is computed with `torch.stft` and transformers' mel filter bank
(torchaudio's definition, without torchaudio). Module names follow the published checkpoint
(`model.conv.*`, `model.conformer.*` under MuQ-MuLan's `mulan.audio.model.`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# MuQ-large's published pretraining recipe (MuQ_large_iter): front end, widths, and the
# Wav2Vec2-Conformer settings that matter at inference.
MUQ_LARGE: dict[str, Any] = {
    "label_rate": 25, "hop_length": 240, "n_mels": 128, "conv_dim": 512, "encoder_dim": 1024, "encoder_depth": 12,
    "stat": {"melspec_2048_mean": 6.768444971712967, "melspec_2048_std": 18.417922652295623},
    "w2v2_config": {"num_attention_heads": 16, "intermediate_size": 4096, "conv_depthwise_kernel_size": 31,
                    "position_embeddings_type": "rotary", "rotary_embedding_base": 10000, "hidden_act": "swish",
                    "layer_norm_eps": 1e-5, "num_conv_pos_embeddings": 128, "num_conv_pos_embedding_groups": 16},
}
MUQ_TINY: dict[str, Any] = {
    **MUQ_LARGE, "conv_dim": 4, "encoder_dim": 32, "encoder_depth": 1,
    "w2v2_config": {**MUQ_LARGE["w2v2_config"], "num_attention_heads": 2, "intermediate_size": 64,
                    "conv_depthwise_kernel_size": 3, "num_conv_pos_embeddings": 4, "num_conv_pos_embedding_groups": 2},
}
SAMPLE_RATE = 24_000
N_FFT = 2048
_CONFIG_NOISE = ("architectures", "torch_dtype", "dtype", "transformers_version", "_name_or_path")


class ResBlock2d(nn.Module):
    """Two 3x3 convs with batch norm, and a strided 3x3 shortcut when the shape changes."""

    def __init__(self, idim: int, odim: int, stride: tuple[int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(idim, odim, 3, padding=1, stride=stride)
        self.bn1 = nn.BatchNorm2d(odim)
        self.conv2 = nn.Conv2d(odim, odim, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(odim)
        self.relu = nn.ReLU()
        self.diff = idim != odim or stride[0] > 1
        if self.diff:
            self.conv3 = nn.Conv2d(idim, odim, 3, padding=1, stride=stride)
            self.bn3 = nn.BatchNorm2d(odim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = self.bn3(self.conv3(x)) if self.diff else x
        return self.relu(shortcut + out)  # type: ignore[no-any-return]


class ConvSubsampling(nn.Module):
    """`[b, mels, t]` -> `[b, t / 4, odim]` (frequency / 4 as well, flattened into the features)."""

    def __init__(self, hdim: int, odim: int, n_bands: int, strides: tuple[int, int]) -> None:
        super().__init__()
        self.conv = nn.Sequential(ResBlock2d(1, hdim, (2, strides[0])), ResBlock2d(hdim, hdim, (2, strides[1])))
        self.linear = nn.Linear(hdim * n_bands // 4, odim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x.unsqueeze(1))  # b c f t
        b, c, f, t = h.shape
        return self.linear(h.permute(0, 3, 1, 2).reshape(b, t, c * f))  # type: ignore[no-any-return]


def conformer_config(config: dict[str, Any]) -> Any:
    """A `Wav2Vec2ConformerConfig` from MuQ's `w2v2_config`, sized by `encoder_dim` / `encoder_depth`."""
    from transformers import Wav2Vec2ConformerConfig

    w2v2 = {k: v for k, v in config["w2v2_config"].items() if k not in _CONFIG_NOISE}
    w2v2.update(hidden_size=config["encoder_dim"], num_hidden_layers=config["encoder_depth"])
    out = Wav2Vec2ConformerConfig(**w2v2)
    out._attn_implementation = "eager"
    return out


class MuQBackbone(nn.Module):
    """MuQ's feature path (`MuQ.model`): mel front end, conv subsampling, conformer."""

    def __init__(self, config: dict[str, Any]) -> None:
        from transformers.audio_utils import mel_filter_bank
        from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import Wav2Vec2ConformerEncoder

        super().__init__()
        self.hop = int(config["hop_length"])
        stat = config["stat"]
        self.mean, self.std = float(stat["melspec_2048_mean"]), float(stat["melspec_2048_std"])
        n_fold = 100 // int(config["label_rate"])
        strides = {4: (2, 2), 2: (2, 1)}[n_fold]
        self.conv = ConvSubsampling(config["conv_dim"], config["encoder_dim"], config["n_mels"], strides)
        self.conformer = Wav2Vec2ConformerEncoder(conformer_config(config))
        bank = mel_filter_bank(N_FFT // 2 + 1, int(config["n_mels"]), 0.0, SAMPLE_RATE / 2, SAMPLE_RATE, None, "htk")
        self.mel_bank = nn.Buffer(torch.from_numpy(bank).float(), persistent=False)
        self.window = nn.Buffer(torch.hann_window(N_FFT), persistent=False)

    def melspec_db(self, wav: torch.Tensor) -> torch.Tensor:
        """`[b, samples]` -> standardised dB mel spectrogram `[b, mels, frames - 1]` (float32)."""
        spec = torch.stft(wav.float(), N_FFT, hop_length=self.hop, win_length=N_FFT, window=self.window,
                          center=True, pad_mode="reflect", return_complex=True).abs().pow(2)
        mel = torch.matmul(spec.transpose(1, 2), self.mel_bank).transpose(1, 2)
        db = 10.0 * torch.log10(mel.clamp(min=1e-10))
        return (db[..., :-1] - self.mean) / self.std

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """`[b, samples]` at 24 kHz -> the conformer's last hidden state `[b, frames / 4, encoder_dim]`."""
        h = self.conv(self.melspec_db(wav).to(self.conv.linear.weight.dtype))
        return self.conformer(h).last_hidden_state  # type: ignore[no-any-return]


class MuQ(nn.Module):
    """The published `MuQ` wrapper: only a `model` attribute, for the checkpoint's key names."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.model = MuQBackbone(config)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return self.model(wav)  # type: ignore[no-any-return]
