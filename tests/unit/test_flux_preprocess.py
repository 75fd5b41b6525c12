"""/flux-preprocess without Ray: image cropping, input bounds, the rank worker on one CPU rank with
tiny presets (captions, trigger word, latents shifted and scaled, T5/CLIP shapes), and the prod
loading path (`from_pretrained` by subfolder) on a tiny model saved to a temp dir."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from deployments.flux_lora.data import decode_preprocessed
from deployments.flux_lora.preprocess import FluxPreprocessConfig, PreprocessInput, prepare_images, square_pixels
from deployments.flux_lora.preprocess_worker import FluxPreprocessWorker, shard, with_trigger
from serve_app.archive import ArchiveImage
from serve_app.errors import FieldError

FAST_CAPTIONS = {"caption_num_beams": 1, "caption_max_new_tokens": 6}


def png(image: Image.Image, **save: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG" if not save else save.pop("format"), **save)
    return buf.getvalue()


def test_shard_covers_every_image_once() -> None:
    for n in range(0, 9):
        for world in (1, 2, 3, 4):
            slices = [shard(n, r, world) for r in range(world)]
            assert [i for a, b in slices for i in range(a, b)] == list(range(n))
            assert max(b - a for a, b in slices) - min(b - a for a, b in slices) <= 1
    assert [shard(1, r, 2) for r in range(2)] == [(0, 0), (0, 1)]


def test_trigger_word_is_prepended_once() -> None:
    assert with_trigger("ohwx", "a cat") == "ohwx a cat"
    assert with_trigger("ohwx", "ohwx a cat") == "ohwx a cat"
    assert with_trigger("ohwx", "ohwxy a cat") == "ohwx ohwxy a cat"
    assert with_trigger("ohwx", None) == "ohwx"
    assert with_trigger("", " a cat ") == "a cat"


def test_square_crop_keeps_the_centre_and_does_not_squash() -> None:
    wide = Image.new("RGB", (300, 100), (255, 0, 0))
    wide.paste((0, 255, 0), (100, 0, 200, 100))  # the centre third is green
    pixels = square_pixels(png(wide), 256)
    assert pixels.shape == (256, 256, 3) and pixels.dtype == np.uint8
    assert (pixels[:, 8:-8] == [0, 255, 0]).all()  # only the green square survives (edges: resampling)


def test_exif_orientation_and_transparency() -> None:
    stored = Image.new("RGB", (200, 200), (0, 0, 255))
    stored.paste((255, 255, 0), (0, 0, 200, 100))  # yellow top half, blue bottom half
    exif = Image.Exif()
    exif[0x0112] = 6  # displays turned 90° clockwise: yellow on the right
    turned = square_pixels(png(stored, format="JPEG", exif=exif.tobytes(), quality=95), 256).astype(int)
    assert np.abs(turned[128, 20] - [0, 0, 255]).max() < 20
    assert np.abs(turned[128, 235] - [255, 255, 0]).max() < 20
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    assert (square_pixels(png(clear), 256) == 255).all()  # transparency flattened onto white


def test_prepare_images_names_an_unreadable_image() -> None:
    good = ArchiveImage("a.png", png(Image.new("RGB", (40, 30))), caption="a cat")
    pixels, captions = prepare_images([good, ArchiveImage("b.png", png(Image.new("L", (20, 20))))], 256)
    assert pixels.shape == (2, 256, 256, 3) and captions == ["a cat", None]
    with pytest.raises(FieldError, match=r"dir/bad\.jpg is not a readable image") as e:
        prepare_images([good, ArchiveImage("dir/bad.jpg", b"not an image")], 256)
    assert e.value.field == "images_data_url"


@pytest.mark.parametrize("field, value", [("resolution", 240), ("resolution", 1040), ("resolution", 520),
                                          ("trigger_word", "x" * 101)])
def test_input_bounds(field: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        PreprocessInput(images_data_url="data:,x", **{field: value})


def test_defaults_follow_fal() -> None:
    request = PreprocessInput(images_data_url="https://x/a.zip")
    assert (request.trigger_word, request.resolution) == ("ohwx", 512)
    config = FluxPreprocessConfig()
    assert config.model.id == "black-forest-labs/FLUX.1-dev" and config.world_size == 2
    with pytest.raises(ValidationError):
        FluxPreprocessConfig.model_validate({"modle": {"preset": "tiny"}})


def make_worker(model: dict[str, Any], captioner: dict[str, Any] | None) -> FluxPreprocessWorker:
    worker = FluxPreprocessWorker(0, 1)
    worker.device = torch.device("cpu")
    worker.setup(model=model, captioner=captioner, dtype="float32", **FAST_CAPTIONS)
    return worker


@pytest.fixture(scope="module")
def worker() -> FluxPreprocessWorker:
    return make_worker({"preset": "tiny"}, {"preset": "tiny"})


def images(n: int, res: int = 256) -> Any:
    return np.random.default_rng(0).integers(0, 256, (n, res, res, 3), dtype=np.uint8)


def test_worker_encodes_captions_latents_and_text(worker: FluxPreprocessWorker) -> None:
    pixels = images(3)
    out = worker(images=pixels, captions=["a cat", None, "ohwx a dog"], trigger_word="ohwx", resolution=256,
                 batch_size=2, seed=5)
    data = decode_preprocessed(out["data"])
    assert data.num_images == 3 and data.resolution == 256 and data.trigger_word == "ohwx"
    assert data.captions[0] == "ohwx a cat" and data.captions[2] == "ohwx a dog"
    assert data.captions[1].startswith("ohwx ") and len(data.captions[1]) > len("ohwx ")  # BLIP's words
    assert out["captions"] == data.captions
    assert data.latents.shape == (3, 4, 32, 32) and data.latents.dtype == torch.float32
    assert data.text_embeddings.shape == (3, 512, 32) and data.pooled_embeddings.shape == (3, 32)

    # Latents: Flux training's (sample - shift) * scale, image i sampled with seed + i.
    vae = worker.vae
    x = torch.from_numpy(pixels[1:2].copy()).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.inference_mode():
        sample = vae.encode(x).latent_dist.sample(generator=torch.Generator().manual_seed(5 + 1))
    expected = (sample - vae.config.shift_factor) * vae.config.scaling_factor
    torch.testing.assert_close(data.latents[1:2], expected, rtol=1e-4, atol=1e-5)
    # Text: T5 last_hidden_state over 512 padded tokens, CLIP pooler_output, as FluxPipeline.encode_prompt.
    from diffusers import FluxPipeline

    pipe = FluxPipeline(transformer=None, vae=vae, scheduler=None, text_encoder=worker.text_encoder,
                        tokenizer=worker.tokenizer, text_encoder_2=worker.text_encoder_2,
                        tokenizer_2=worker.tokenizer_2)
    with torch.inference_mode():
        t5, pooled, _ = pipe.encode_prompt(data.captions, None, device=torch.device("cpu"), max_sequence_length=512)
    torch.testing.assert_close(data.text_embeddings, t5)
    torch.testing.assert_close(data.pooled_embeddings, pooled)


def test_batches_and_seeds_give_the_same_file(worker: FluxPreprocessWorker) -> None:
    kwargs = {"images": images(3), "captions": ["a", "b", "c"], "trigger_word": "ohwx", "resolution": 256}
    one = decode_preprocessed(worker(batch_size=1, **kwargs)["data"])
    three = decode_preprocessed(worker(batch_size=3, **kwargs)["data"])
    torch.testing.assert_close(one.latents, three.latents, rtol=1e-4, atol=1e-5)
    other = decode_preprocessed(worker(batch_size=3, seed=1, **kwargs)["data"])
    assert not torch.allclose(other.latents, three.latents)


def test_without_a_captioner_the_trigger_word_is_the_caption() -> None:
    bare = make_worker({"preset": "tiny"}, None)
    out = bare(images=images(1), captions=[None], trigger_word="sks", resolution=256)
    assert decode_preprocessed(out["data"]).captions == ["sks"]


def test_prod_loading_path_from_a_saved_tiny_model(worker: FluxPreprocessWorker, tmp_path: Path) -> None:
    flux, blip = tmp_path / "flux", tmp_path / "blip"
    for sub in ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"):
        getattr(worker, sub).save_pretrained(flux / sub)
    assert worker.captioner is not None
    worker.captioner.model.save_pretrained(blip)
    worker.captioner.processor.save_pretrained(blip)

    loaded = make_worker({"id": str(flux)}, {"id": str(blip)})
    kwargs = {"images": images(2), "captions": [None, "a cat"], "trigger_word": "ohwx", "resolution": 256}
    a, b = decode_preprocessed(worker(**kwargs)["data"]), decode_preprocessed(loaded(**kwargs)["data"])
    assert a.captions == b.captions
    for name in ("latents", "text_embeddings", "pooled_embeddings"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))
