"""The preprocessed-dataset file format shared by /flux-preprocess and the Flux LoRA trainer."""

from __future__ import annotations

import json
import tempfile
from typing import Any

import pytest
import torch
from safetensors.torch import save

from deployments.flux_lora.data import FORMAT, decode_preprocessed, encode_preprocessed


def dataset(n: int = 3, res: int = 256, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        "latents": torch.randn(n, 16, res // 8, res // 8, generator=g).to(dtype),
        "text_embeddings": torch.randn(n, 512, 32, generator=g).to(dtype),
        "pooled_embeddings": torch.randn(n, 24, generator=g).to(dtype),
        "captions": [f"ohwx caption {i} - ünïcode" for i in range(n)],
        "trigger_word": "ohwx",
        "resolution": res,
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip(dtype: torch.dtype) -> None:
    d = dataset(dtype=dtype)
    out = decode_preprocessed(encode_preprocessed(**d))
    assert out.num_images == 3 and out.resolution == 256 and out.trigger_word == "ohwx"
    assert out.captions == d["captions"]
    for name in ("latents", "text_embeddings", "pooled_embeddings"):
        assert getattr(out, name).dtype == dtype
        assert torch.equal(getattr(out, name), d[name])


def test_file_is_plain_safetensors_with_string_metadata() -> None:
    from safetensors import safe_open

    raw = encode_preprocessed(**dataset(n=2))
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(raw)
        f.flush()
        with safe_open(f.name, framework="pt") as st:
            meta = st.metadata()
            assert sorted(st.keys()) == ["latents", "pooled_embeddings", "text_embeddings"]
    assert meta["format"] == FORMAT and meta["num_images"] == "2" and meta["resolution"] == "256"
    assert json.loads(meta["captions"])[0].startswith("ohwx ")


@pytest.mark.parametrize("change, match", [
    ({"latents": torch.zeros(3, 16, 16, 16)}, "latents must be"),  # wrong side for 256
    ({"text_embeddings": torch.zeros(3, 77, 32)}, "text_embeddings must be"),
    ({"pooled_embeddings": torch.zeros(2, 24)}, "disagree"),
    ({"pooled_embeddings": torch.zeros(3, 24, dtype=torch.bfloat16)}, "one dtype"),
    ({"captions": ["a", "b"]}, "captions must be 3"),
    ({"resolution": 250}, "multiple of 16"),
    ({"latents": torch.zeros(3, 16, 32, 32, dtype=torch.int64)}, "floating-point"),
])
def test_encode_rejects_inconsistent_data(change: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_preprocessed(**{**dataset(), **change})


def test_encode_rejects_an_empty_dataset() -> None:
    d = dataset()
    d.update(latents=d["latents"][:0], text_embeddings=d["text_embeddings"][:0],
             pooled_embeddings=d["pooled_embeddings"][:0], captions=[])
    with pytest.raises(ValueError, match="at least one"):
        encode_preprocessed(**d)


def _raw(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    return bytes(save(tensors, metadata=metadata))


def _good_parts() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    d = dataset(n=2)
    tensors = {k: d[k] for k in ("latents", "text_embeddings", "pooled_embeddings")}
    meta = {"format": FORMAT, "captions": json.dumps(d["captions"]), "trigger_word": "ohwx",
            "resolution": "256", "num_images": "2"}
    return tensors, meta


@pytest.mark.parametrize("mutate, match", [
    (lambda t, m: m.update(format="flux-lora-preprocessed/2"), "format is"),
    (lambda t, m: m.pop("captions"), "lacks metadata"),
    (lambda t, m: m.update(captions="not json"), "bad metadata"),
    (lambda t, m: m.update(captions='{"a": 1}'), "not a JSON list"),
    (lambda t, m: m.update(resolution="big"), "bad metadata"),
    (lambda t, m: m.update(num_images="5"), "num_images=5"),
    (lambda t, m: m.update(resolution="512"), "latents must be"),
    (lambda t, m: t.pop("pooled_embeddings"), "exactly the tensors"),
    (lambda t, m: t.update(masks=torch.ones(2)), "exactly the tensors"),
])
def test_decode_rejects_bad_files(mutate: Any, match: str) -> None:
    tensors, meta = _good_parts()
    mutate(tensors, meta)
    with pytest.raises(ValueError, match=match):
        decode_preprocessed(_raw(tensors, meta))


@pytest.mark.parametrize("blob", [b"", b"\x00" * 4, b"PK\x03\x04" + b"\x00" * 40, (10**9).to_bytes(8, "little") + b"{}",
                                  (2).to_bytes(8, "little") + b"[]", (4).to_bytes(8, "little") + b"\xff\xfe{}"])
def test_decode_rejects_non_safetensors(blob: bytes) -> None:
    with pytest.raises(ValueError, match=r"safetensors|format"):
        decode_preprocessed(blob)


def test_decode_rejects_truncated_tensor_data() -> None:
    raw = encode_preprocessed(**dataset(n=2))
    with pytest.raises(ValueError, match="corrupt"):
        decode_preprocessed(raw[:-100])


def test_pickles_are_rejected() -> None:
    import io
    import pickle

    buf = io.BytesIO()
    pickle.dump({"latents": [1, 2, 3]}, buf)
    with pytest.raises(ValueError):
        decode_preprocessed(buf.getvalue())
