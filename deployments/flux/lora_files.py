"""LoRA files: read without pickle, recognise the format, check that the adapter fits the transformer.

Accepted formats (each has a test built from its key names):
- diffusers / peft, as `/flux-train` and diffusers' scripts write them:
  `transformer.<module>.lora_A.weight` / `.lora_B.weight`, the adapter config in the file's metadata;
- kohya (sd-scripts): `lora_unet_<block>_<layer>.lora_down.weight` / `.lora_up.weight` / `.alpha`;
- BFL, the original Flux module names as ComfyUI saves them:
  `diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight` (or `.lora_A` / `.lora_B`), `.alpha`.

diffusers converts kohya and BFL (splitting BFL's fused qkv and `linear1` projections); the result
must then target existing Linear modules of the transformer with matching shapes. Everything else
(text-encoder weights, DoRA, LoKr, control LoRAs that widen the input, LoRAs of another model) is a
422 on `loras`: loading it would fail halfway or silently change what the file means.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from serve_app.errors import FieldError

FIELD = "loras"
DIFFUSERS, KOHYA, BFL = "diffusers", "kohya", "bfl"
_KOHYA_SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")
_BFL_SUFFIXES = (*_KOHYA_SUFFIXES, ".lora_A.weight", ".lora_B.weight")
_DIFFUSERS_SUFFIXES = (".lora_A.weight", ".lora_B.weight", ".lora_B.bias", ".alpha")
_UNSUPPORTED = {"dora_scale": "DoRA", "lora_magnitude_vector": "DoRA", ".lokr_": "LoKr", ".hada_": "LoHa",
                "text_encoder": "text-encoder", "lora_te": "text-encoder", "text_encoders.": "text-encoder",
                ".diff": "full-weight difference"}
_MATRICES = ((".lora_A.weight", "A"), (".lora_B.weight", "B"), (".lora_B.bias", "bias"))

LinearShapes = dict[str, tuple[int, int]]
"""`(in_features, out_features)` of every Linear module of the transformer, by name."""


@dataclass(frozen=True)
class PreparedLora:
    """A LoRA file that passed every check, ready for `load_lora_weights`."""

    sha256: str  # of the file as downloaded: the adapter's content address
    data: bytes  # diffusers-format safetensors to load: the file itself, or its conversion
    format: str
    rank: int
    modules: frozenset[str]  # transformer modules the adapter changes
    bias: bool  # the adapter has `lora_B.bias` terms


def linear_shapes(transformer: Any) -> LinearShapes:
    """Shapes of the transformer's Linear modules; call it before any adapter wraps them."""
    import torch

    return {name: (m.in_features, m.out_features) for name, m in transformer.named_modules()
            if isinstance(m, torch.nn.Linear) and ".base_layer" not in name and ".lora_" not in name}


def _reject(message: str) -> FieldError:
    return FieldError(FIELD, message)


def read_safetensors(data: bytes) -> dict[str, Any]:
    """The tensors of a safetensors file; anything else (a pickle) is refused unread."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if len(data) < 8:
        raise _reject("not a safetensors file (too short)")
    (header_len,) = struct.unpack("<Q", data[:8])
    try:
        header = json.loads(data[8:8 + header_len]) if 2 <= header_len <= len(data) - 8 else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict):
        raise _reject("not a safetensors file: only `.safetensors` LoRAs are accepted (pickled checkpoints are not "
                      "loaded)")
    try:
        return dict(load(data))
    except SafetensorError as e:
        raise _reject(f"malformed safetensors file: {e}") from e


def detect_format(keys: list[str]) -> str:
    """`diffusers`, `kohya` or `bfl`, from the key names (see the module docstring)."""
    if not keys:
        raise _reject("the file holds no tensors")
    for marker, what in _UNSUPPORTED.items():
        if any(marker in k for k in keys):
            example = next(k for k in keys if marker in k)
            raise _reject(f"{what} LoRA weights are not supported (keys such as {example!r}); this service "
                          "loads LoRAs of the Flux transformer")

    def all_keys(prefixes: tuple[str, ...], suffixes: tuple[str, ...]) -> bool:
        return all(k.startswith(prefixes) and k.endswith(suffixes) for k in keys)

    if all_keys(("transformer.",), _DIFFUSERS_SUFFIXES):
        return DIFFUSERS
    if all_keys(("lora_unet_",), _KOHYA_SUFFIXES):
        return KOHYA
    if all_keys(("diffusion_model.",), _BFL_SUFFIXES):
        return BFL
    raise _reject(f"unrecognised LoRA format (first key {sorted(keys)[0]!r}); accepted: diffusers/peft "
                  "(`transformer.*.lora_A.weight`), kohya (`lora_unet_*.lora_down.weight`) and BFL "
                  "(`diffusion_model.*.lora_down.weight`) Flux transformer LoRAs")


def _bfl_as_kohya_names(tensors: dict[str, Any]) -> dict[str, Any]:
    """BFL keys saved with peft's `lora_A` / `lora_B` names, renamed to the `lora_down` / `lora_up` names
    diffusers' BFL conversion reads (same matrices: A is the down projection)."""
    return {k.replace(".lora_A.weight", ".lora_down.weight").replace(".lora_B.weight", ".lora_up.weight"): v
            for k, v in tensors.items()}


def _fold_final_layer_alpha(tensors: dict[str, Any]) -> dict[str, Any]:
    """diffusers 0.42.1 converts the final layer's kohya/BFL weights without their alpha (the other
    blocks get `alpha / rank`): fold it into `lora_up` first so the conversion is exact."""
    out = dict(tensors)
    for key in [k for k in tensors if "final_layer" in k and k.endswith(".alpha")]:
        module = key.removesuffix(".alpha")
        down, up = out.get(f"{module}.lora_down.weight"), out.get(f"{module}.lora_up.weight")
        alpha = out.pop(key)
        if down is not None and up is not None:
            out[f"{module}.lora_up.weight"] = up * (float(alpha) / down.shape[0])
    return out


def to_diffusers(tensors: dict[str, Any]) -> dict[str, Any]:
    """diffusers' Flux conversion of a kohya / BFL / diffusers state dict (keys `transformer.*`)."""
    from diffusers import FluxPipeline

    try:
        converted, _alphas = FluxPipeline.lora_state_dict(dict(tensors), return_alphas=True)
    except (ValueError, KeyError, AssertionError, RuntimeError, IndexError, TypeError) as e:
        # diffusers' converters assume FLUX.1's sizes and block counts: a mismatch is the file's fault
        raise _reject(f"diffusers could not convert this LoRA: {type(e).__name__}: {e}") from e
    return dict(converted)


def check_fits(converted: dict[str, Any], shapes: LinearShapes) -> tuple[int, frozenset[str], bool]:
    """Check every adapter matrix against its Linear module; return `(rank, modules, has_bias)`."""
    modules: set[str] = set()
    rank, bias = 0, False
    problems: list[str] = []
    for key, tensor in converted.items():
        if not key.startswith("transformer."):
            problems.append(f"{key}: not a transformer weight")
            continue
        name = key.removeprefix("transformer.")
        match = next(((name.removesuffix(suffix), kind) for suffix, kind in _MATRICES if name.endswith(suffix)), None)
        if match is None:
            problems.append(f"{key}: not a LoRA matrix")
            continue
        module, kind = match
        if module not in shapes:
            problems.append(f"{key}: the transformer has no Linear module {module!r}")
            continue
        in_features, out_features = shapes[module]
        shape = tuple(tensor.shape)
        ok = {"A": len(shape) == 2 and shape[1] == in_features, "B": len(shape) == 2 and shape[0] == out_features,
              "bias": shape == (out_features,)}[kind]
        if not ok:
            problems.append(f"{key}: shape {list(shape)} does not fit {module} ({in_features} -> {out_features})")
            continue
        modules.add(module)
        rank = max(rank, shape[0]) if kind == "A" else rank
        bias = bias or kind == "bias"
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise _reject("this LoRA does not fit this Flux model: " + "; ".join(problems[:3]) + more)
    if not modules or rank == 0:
        raise _reject("the file holds no LoRA matrices for the Flux transformer")
    return rank, frozenset(modules), bias


def prepare(data: bytes, shapes: LinearShapes) -> PreparedLora:
    """Read, recognise, convert and check one downloaded LoRA file (CPU work: call it off the event loop).

    A diffusers file is loaded as it is (its metadata carries the adapter's alpha). kohya and BFL files
    are loaded as their diffusers conversion, which folds alpha into the matrices (for the final layer
    we do it, see `_fold_final_layer_alpha`); the keys that diffusers 0.42.1 leaves without the
    `transformer.` prefix (embedders, final layer) get it here, as `load_lora_weights` would
    otherwise drop them without a word.

    Raises:
        FieldError: on `loras`, for anything this module does not accept.
    """
    from safetensors.torch import save

    tensors = read_safetensors(data)
    fmt = detect_format(list(tensors))
    if fmt == BFL:
        tensors = _bfl_as_kohya_names(tensors)
    if fmt != DIFFUSERS:
        tensors = _fold_final_layer_alpha(tensors)
    converted = to_diffusers(tensors)
    if fmt != DIFFUSERS:
        converted = {k if k.startswith("transformer.") else f"transformer.{k}": v for k, v in converted.items()}
    rank, modules, bias = check_fits(converted, shapes)
    loadable = data if fmt == DIFFUSERS else save({k: v.contiguous().clone() for k, v in converted.items()})
    return PreparedLora(sha256=hashlib.sha256(data).hexdigest(), data=loadable, format=fmt, rank=rank,
                        modules=modules, bias=bias)
