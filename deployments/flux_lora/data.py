"""The preprocessed-dataset file shared by `/flux-preprocess` (writer) and the Flux LoRA trainer (reader).

A safetensors file (never a pickle) holding, for N images:

| tensor | shape | meaning |
|---|---|---|
| `latents` | `[N, C, res/8, res/8]` | VAE latents, already `(latent - shift_factor) * scaling_factor` |
| `text_embeddings` | `[N, 512, D_t5]` | T5 encoder `last_hidden_state`, prompts padded to 512 tokens |
| `pooled_embeddings` | `[N, D_clip]` | CLIPTextModel `pooler_output`, prompts padded to 77 tokens |

All three share one floating dtype (the encoders': bfloat16 on GPU, float32 on CPU). The metadata
(strings, as safetensors requires) holds `format` (`flux-lora-preprocessed/1`), `captions` (a JSON
list of the N captions, trigger word included), `trigger_word`, `resolution` and `num_images`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FORMAT = "flux-lora-preprocessed/1"
T5_SEQUENCE_LENGTH = 512
VAE_DOWNSAMPLE = 8
TENSOR_NAMES = ("latents", "text_embeddings", "pooled_embeddings")
METADATA_KEYS = ("format", "captions", "trigger_word", "resolution", "num_images")


@dataclass(frozen=True)
class PreprocessedData:
    """A decoded (and validated) preprocessed dataset; tensors are on the CPU."""

    latents: Any  # torch.Tensor [N, C, res/8, res/8]
    text_embeddings: Any  # torch.Tensor [N, 512, D_t5]
    pooled_embeddings: Any  # torch.Tensor [N, D_clip]
    captions: list[str]
    trigger_word: str
    resolution: int

    @property
    def num_images(self) -> int:
        """N, the number of images (rows of every tensor)."""
        return int(self.latents.shape[0])


def _validate(latents: Any, text_embeddings: Any, pooled_embeddings: Any, captions: Sequence[str],
              resolution: int) -> None:
    """Raise ValueError unless the tensors and captions form one consistent dataset."""
    import torch

    tensors = {"latents": latents, "text_embeddings": text_embeddings, "pooled_embeddings": pooled_embeddings}
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {tensor.dtype}")
    dtypes = {str(t.dtype) for t in tensors.values()}
    if len(dtypes) != 1:
        raise ValueError(f"latents and embeddings must share one dtype, got {sorted(dtypes)}")
    if resolution <= 0 or resolution % 16:
        raise ValueError(f"resolution must be a positive multiple of 16, got {resolution}")
    side = resolution // VAE_DOWNSAMPLE
    if latents.ndim != 4 or tuple(latents.shape[2:]) != (side, side):
        raise ValueError(f"latents must be [N, C, {side}, {side}] for resolution {resolution}, "
                         f"got {list(latents.shape)}")
    if text_embeddings.ndim != 3 or text_embeddings.shape[1] != T5_SEQUENCE_LENGTH:
        raise ValueError(f"text_embeddings must be [N, {T5_SEQUENCE_LENGTH}, D], got {list(text_embeddings.shape)}")
    if pooled_embeddings.ndim != 2:
        raise ValueError(f"pooled_embeddings must be [N, D], got {list(pooled_embeddings.shape)}")
    n = latents.shape[0]
    if n < 1:
        raise ValueError("a preprocessed dataset needs at least one image")
    if text_embeddings.shape[0] != n or pooled_embeddings.shape[0] != n:
        raise ValueError(f"tensors disagree on the number of images: latents {n}, text_embeddings "
                         f"{text_embeddings.shape[0]}, pooled_embeddings {pooled_embeddings.shape[0]}")
    if len(captions) != n or not all(isinstance(c, str) for c in captions):
        raise ValueError(f"captions must be {n} strings, got {len(captions)} items")


def encode_preprocessed(latents: Any, text_embeddings: Any, pooled_embeddings: Any, captions: Sequence[str],
                        trigger_word: str, resolution: int) -> bytes:
    """Serialise a dataset to safetensors bytes (see the module docstring for the layout).

    Raises:
        ValueError: the shapes, dtypes or caption count are inconsistent.
    """
    from safetensors.torch import save

    _validate(latents, text_embeddings, pooled_embeddings, captions, resolution)
    tensors = {name: t.detach().to("cpu").contiguous()
               for name, t in zip(TENSOR_NAMES, (latents, text_embeddings, pooled_embeddings), strict=True)}
    metadata = {"format": FORMAT, "captions": json.dumps(list(captions), ensure_ascii=False),
                "trigger_word": trigger_word, "resolution": str(resolution), "num_images": str(len(captions))}
    return bytes(save(tensors, metadata=metadata))


def _header(data: bytes) -> dict[str, Any]:
    """The JSON header of a safetensors blob (8-byte little-endian length, then JSON)."""
    if len(data) < 8:
        raise ValueError("not a safetensors file: too short")
    size = int.from_bytes(data[:8], "little")
    if size <= 0 or 8 + size > len(data):
        raise ValueError("not a safetensors file: bad header length")
    try:
        header = json.loads(data[8:8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a safetensors file: unreadable header ({e})") from e
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file: the header is not an object")
    return header


def decode_preprocessed(data: bytes) -> PreprocessedData:
    """Read and validate a file written by `encode_preprocessed`.

    Raises:
        ValueError: not a safetensors file, another format or version, missing or extra tensors,
            bad metadata, or inconsistent shapes.
    """
    from safetensors.torch import load

    metadata = _header(data).get("__metadata__") or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"not a preprocessed Flux LoRA dataset: format is {metadata.get('format')!r}, "
                         f"expected {FORMAT!r}")
    missing = [k for k in METADATA_KEYS if k not in metadata]
    if missing:
        raise ValueError(f"preprocessed file lacks metadata {missing}")
    try:
        captions = json.loads(metadata["captions"])
        resolution = int(metadata["resolution"])
        num_images = int(metadata["num_images"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"preprocessed file has bad metadata: {e}") from e
    if not isinstance(captions, list):
        raise ValueError("preprocessed file has bad metadata: captions is not a JSON list")
    try:
        tensors = load(data)
    except Exception as e:  # safetensors raises its own SafetensorError on corrupt data
        raise ValueError(f"preprocessed file is corrupt: {e}") from e
    if set(tensors) != set(TENSOR_NAMES):
        raise ValueError(f"preprocessed file must hold exactly the tensors {list(TENSOR_NAMES)}, "
                         f"got {sorted(tensors)}")
    _validate(tensors["latents"], tensors["text_embeddings"], tensors["pooled_embeddings"], captions, resolution)
    if num_images != len(captions):
        raise ValueError(f"preprocessed file says num_images={num_images} but holds {len(captions)} images")
    return PreprocessedData(latents=tensors["latents"], text_embeddings=tensors["text_embeddings"],
                            pooled_embeddings=tensors["pooled_embeddings"], captions=captions,
                            trigger_word=metadata["trigger_word"], resolution=resolution)
