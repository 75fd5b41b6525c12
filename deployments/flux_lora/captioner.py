"""The image captioner of `/flux-preprocess`: BLIP (`BlipForConditionalGeneration` + `BlipProcessor`).

BLIP is transformers-native (no remote code, unlike the seed's moondream2) and maintained;
prod uses `Salesforce/blip-image-captioning-large`. Presets: `tiny` is the same classes from small
configs with seeded random weights and an in-memory WordPiece tokenizer (CPU tests, dev);
`full` is BLIP-large's architecture with random weights (benchmarks). Random weights caption
with random words, which is all tests need.
"""

from __future__ import annotations

from typing import Any

from components.tokenizers import bert_tokenizer
from serve_app.models.source import ModelSource, build_on, build_or_load

BLIP_LARGE_ID = "Salesforce/blip-image-captioning-large"

_TINY: dict[str, Any] = {
    "text": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
             "encoder_hidden_size": 32, "max_position_embeddings": 64},
    "vision": {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2,
               "image_size": 32, "patch_size": 8},
    "projection_dim": 32,
}
_FULL: dict[str, Any] = {  # Salesforce/blip-image-captioning-large
    "text": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
             "encoder_hidden_size": 1024, "max_position_embeddings": 512, "vocab_size": 30524},
    "vision": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16, "num_hidden_layers": 24,
               "image_size": 384, "patch_size": 16, "layer_norm_eps": 1e-5},
    "projection_dim": 512,
}


def blip_tokenizer() -> Any:
    """A BLIP-style (BERT WordPiece) tokenizer built in memory, with BLIP's `[DEC]` start token."""
    return bert_tokenizer(("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"), bos_token="[DEC]",
                          continuations=False, model_max_length=64)


def build_captioner(preset: str, device: str, dtype: Any) -> tuple[Any, Any]:
    """`(BlipForConditionalGeneration, BlipProcessor)` with random weights, built on `device`."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    if preset not in ("tiny", "full"):
        raise ValueError(f"unknown preset {preset!r}")
    cfg = _TINY if preset == "tiny" else _FULL
    tokenizer = blip_tokenizer()
    text = {**cfg["text"], "vocab_size": max(cfg["text"].get("vocab_size", 0), len(tokenizer)),
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "sep_token_id": tokenizer.sep_token_id, "eos_token_id": tokenizer.sep_token_id}
    config = BlipConfig(text_config=text, vision_config=cfg["vision"], projection_dim=cfg["projection_dim"])
    side = cfg["vision"]["image_size"]
    processor = BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": side, "width": side}),
                              tokenizer=tokenizer)
    with build_on(device, dtype):
        model: Any = BlipForConditionalGeneration(config)
    return model.eval(), processor


class Captioner:
    """Captions PIL images in batches with a BLIP captioning model."""

    def __init__(self, source: ModelSource, device: str, dtype: Any, max_new_tokens: int = 40,
                 num_beams: int = 3) -> None:
        self.device, self.dtype = device, dtype
        self.max_new_tokens, self.num_beams = max_new_tokens, num_beams

        def load(model_id: str, kwargs: dict[str, Any]) -> tuple[Any, Any]:
            from transformers import BlipForConditionalGeneration, BlipProcessor

            blip: Any = BlipForConditionalGeneration
            model = blip.from_pretrained(model_id, dtype=dtype, **kwargs).to(device)
            return model.eval(), BlipProcessor.from_pretrained(model_id, **kwargs)

        self.model, self.processor = build_or_load(source, load=load, presets={
            "tiny": lambda: build_captioner("tiny", device, dtype),
            "full": lambda: build_captioner("full", device, dtype)})

    def __call__(self, images: list[Any]) -> list[str]:
        """One caption per RGB PIL image (greedy or beam search: deterministic)."""
        import torch

        if not images:
            return []
        inputs = self.processor(images=images, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, dtype=self.dtype)
        with torch.inference_mode():
            ids = self.model.generate(pixel_values=pixels, max_new_tokens=self.max_new_tokens,
                                      num_beams=self.num_beams, do_sample=False)
        return [" ".join(text.split()) for text in self.processor.batch_decode(ids, skip_special_tokens=True)]
