"""Loading DiffRhythm's parts from their published files, or building their presets.

Published layouts (hub id or a local directory holding the same files):
- DiT: `cfm_model.pt` (`ASLP-lab/DiffRhythm-1_2-full`, 6144 frames; `ASLP-lab/DiffRhythm-1_2`, 2048).
- VAE: `vae_model.pt` (`ASLP-lab/DiffRhythm-vae`), TorchScript.
- MuQ-MuLan: `config.json` + `model.safetensors` or `pytorch_model.bin` (`OpenMuQ/MuQ-MuLan-large`);
  its MuQ encoder's `config.json` comes from the repository the MuLan config names
  (`OpenMuQ/MuQ-large-msd-iter`), the XLM-R config and tokenizer from `xlm-roberta-base`.
Presets (`tiny`, `full`) are the same classes with seeded random weights; the style tokenizer of a
preset is a small in-memory XLM-R (unigram) tokenizer.
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from pathlib import Path
from typing import Any

import torch

from deployments.diffrhythm import cfm, dit, mulan, vae
from serve_app.models.source import ModelSource, build_on

DIT_FILE = "cfm_model.pt"
VAE_FILE = "vae_model.pt"
MULAN_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# In the published MuQ-MuLan weights but not used to embed (training heads, quantizer targets).
MULAN_TRAINING_ONLY = ("mulan.contrast.", "mulan.multi_layer_contrastive_learning.", "mulan.text_layers_indices",
                       "mulan.audio_layers_indices", "mulan.audio.model.model.linear.",
                       "mulan.audio.model.model.cls_token", "mulan.audio.model.model.quantizer_",
                       "mulan.audio.model.model.rvq.")
MULAN_RECOMPUTED = ("embed_positions.inv_freq", "embeddings.position_ids", "embeddings.token_type_ids")


def fetch(source_id: str, filename: str, kwargs: dict[str, Any]) -> str:
    """Path of `filename` in a local directory, or its hub download (cached; offline flags respected)."""
    local = Path(source_id).expanduser()
    if local.is_dir():
        if not (local / filename).is_file():
            raise FileNotFoundError(f"{local / filename} not found")
        return str(local / filename)
    from huggingface_hub import hf_hub_download

    return str(hf_hub_download(source_id, filename, **kwargs))


def load_dit(source: ModelSource, device: str, dtype: torch.dtype) -> dit.DiT:
    """The DiT from a published `cfm_model.pt`, or a preset built directly on `device` in `dtype`."""
    if source.id is not None:
        state = cfm.read_checkpoint(fetch(source.id, DIT_FILE, source.pretrained_kwargs()))
        with build_on(device, dtype):
            model = dit.DiT(cfm.config_for(state))
        cfm.load_state(model, state)
        return model.eval()
    with torch.random.fork_rng(devices=[]), build_on(device, dtype):
        torch.manual_seed(source.seed)
        return dit.DiT(dit.PRESETS[str(source.preset)]).eval()


def save_dit(model: dit.DiT, directory: str) -> None:
    """Write `cfm_model.pt` in the published layout (`{"model_state_dict": {"transformer.*": ...}}`)."""
    state = {f"transformer.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model_state_dict": state}, os.path.join(directory, DIT_FILE))


def load_vae(source: ModelSource, device: str, dtype: torch.dtype) -> Any:
    """The TorchScript VAE from `vae_model.pt`, or a preset traced from `AutoencoderOobleck`."""
    if source.id is not None:
        return vae.load(fetch(source.id, VAE_FILE, source.pretrained_kwargs()), device, dtype)
    with tempfile.TemporaryDirectory() as tmp, torch.random.fork_rng(devices=[]):
        torch.manual_seed(source.seed)
        path = os.path.join(tmp, VAE_FILE)
        vae.build_preset(str(source.preset), path)
        return vae.load(path, device, dtype)


def tiny_tokenizer() -> Any:
    """An XLM-R-style unigram tokenizer built in memory: style words, letters and digits."""
    from transformers import XLMRobertaTokenizer

    words = ["pop", "rock", "jazz", "piano", "guitar", "happy", "sad", "female", "male", "vocal", "upbeat", "ballad"]
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -5.0) for w in words] + [(c, -10.0) for c in string.ascii_letters + string.digits + ",."]
    return XLMRobertaTokenizer(vocab=[*pieces, ("<mask>", 0.0)])


def _mulan_state(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return dict(torch.load(path, map_location="cpu", weights_only=True))


def load_mulan_state(model: mulan.MuQMuLan, state: dict[str, torch.Tensor]) -> None:
    """Load published MuQ-MuLan weights: old weight-norm names renamed, training-only keys skipped.

    Raises:
        ValueError: a parameter used to embed is missing, unexpected or mis-shaped.
    """
    renamed = {k.replace(".weight_g", ".parametrizations.weight.original0")
                .replace(".weight_v", ".parametrizations.weight.original1"): v for k, v in state.items()}
    own = model.state_dict()
    recomputed = {k for k in set(own) | set(renamed) if k.endswith(MULAN_RECOMPUTED)}
    kept = {k: v for k, v in renamed.items() if not k.startswith(MULAN_TRAINING_ONLY) and k not in recomputed}
    missing = sorted(set(own) - set(kept) - recomputed)
    unexpected = sorted(set(kept) - set(own))
    shapes = sorted(k for k in set(own) & set(kept) if tuple(own[k].shape) != tuple(kept[k].shape))
    if missing or unexpected or shapes:
        raise ValueError(f"MuQ-MuLan weights do not match: missing {missing[:8]} ({len(missing)}), unexpected "
                         f"{unexpected[:8]} ({len(unexpected)}), wrong shape {shapes[:8]} ({len(shapes)})")
    model.load_state_dict(kept, strict=False)


def load_mulan(source: ModelSource, device: str, dtype: torch.dtype, audio_config: str | None = None,
               text_model: str | None = None) -> mulan.MuQMuLan:
    """MuQ-MuLan from its published files, or a preset.

    Args:
        audio_config: hub id or directory of MuQ's `config.json` (default: the MuLan config's
            `audio_model.name`).
        text_model: hub id or directory of the XLM-R config and tokenizer (default: `text_model.name`).
    """
    from transformers import AutoTokenizer, XLMRobertaConfig

    if source.preset is not None:
        config, muq_config, xlmr = mulan.PRESETS[source.preset]
        with torch.random.fork_rng(devices=[]), build_on(device, dtype):
            torch.manual_seed(source.seed)
            return mulan.MuQMuLan(config, muq_config, XLMRobertaConfig(**xlmr), tiny_tokenizer()).eval()
    kwargs = source.pretrained_kwargs()
    with open(fetch(str(source.id), "config.json", kwargs)) as f:
        config = json.load(f)
    with open(fetch(audio_config or config["audio_model"]["name"], "config.json", kwargs)) as f:
        muq_config = json.load(f)
    text_id = text_model or config["text_model"]["name"]
    text_config, tokenizer = XLMRobertaConfig.from_pretrained(text_id, **kwargs), AutoTokenizer.from_pretrained(
        text_id, **kwargs)
    with build_on(device, dtype):
        model = mulan.MuQMuLan(config, muq_config, text_config, tokenizer)
    for name in MULAN_WEIGHTS:
        try:
            path = fetch(str(source.id), name, kwargs)
        except Exception:  # try the next published file name
            continue
        load_mulan_state(model, _mulan_state(path))
        return model.eval()
    raise FileNotFoundError(f"no MuQ-MuLan weights ({' or '.join(MULAN_WEIGHTS)}) in {source.id}")


def save_mulan(model: mulan.MuQMuLan, muq_config: dict[str, Any], directory: str) -> None:
    """Write the published layout: `config.json`, `model.safetensors`, and `muq/` + `text/` beside them."""
    from safetensors.torch import save_file

    root = Path(directory)
    (root / "muq").mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(model.config, indent=2))
    (root / "muq" / "config.json").write_text(json.dumps(muq_config, indent=2))
    model.tokenizer.save_pretrained(str(root / "text"))
    model.mulan.text.model.config.save_pretrained(str(root / "text"))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(root / MULAN_WEIGHTS[0]))
