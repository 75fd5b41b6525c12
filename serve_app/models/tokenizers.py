"""Tokenizers built in memory, for tiny presets: no vocabulary files, no downloads.

They cover the prompts tests and dev use (plus a byte/character fallback for anything else), so a
tiny pipeline tokenizes exactly like a real one, only with a small vocabulary.
"""

from __future__ import annotations

import string
from typing import Any

CORPUS = [
    "a photo of a cat", "a dog in the park", "an astronaut riding a horse on the moon",
    "a red apple on a wooden table", "hello world", "high quality, detailed, 4k",
    "blurry, low quality", "a watercolor painting of mountains at sunset",
]
WORDS = sorted({w for line in CORPUS for w in line.replace(",", " ,").split()})


def gemma_tokenizer() -> Any:
    """A Gemma-style BPE tokenizer (byte fallback, `▁` word marks): ~450 tokens."""
    from transformers import GemmaTokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for ch in ["▁", *string.ascii_letters, *string.digits, *string.punctuation]:
        vocab.setdefault(ch, len(vocab))
    merges: list[Any] = []
    for word in WORDS:
        cur = "▁"
        for ch in word:
            merges.append((cur, ch))
            cur += ch
            vocab.setdefault(cur, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)))


def t5_tokenizer() -> Any:
    """A T5-style unigram tokenizer: ~180 pieces."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -5.0) for w in WORDS]
    pieces += [(c, -10.0) for c in string.ascii_letters + string.digits + string.punctuation]
    pieces += [("▁" + c, -9.0) for c in string.ascii_letters]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def clip_tokenizer(vocab_size: int = 300) -> Any:
    """A CLIP-style byte-level BPE tokenizer trained on the corpus: ~550 tokens, 77 max length."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>",
    )
    tok.train_from_iterator(CORPUS * 10, trainer)
    model = json.loads(tok.to_str())["model"]
    vocab = dict(model["vocab"])
    for ch in pre_tokenizers.ByteLevel.alphabet():
        vocab.setdefault(ch + "</w>", len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    merges: list[Any] = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
