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


def clip_tokenizer() -> Any:
    """A CLIP-style byte-level BPE tokenizer with a fixed vocabulary: every corpus word is one
    token, anything else falls back to single bytes. ~600 tokens, 77 max length.

    Built by hand (no BPE training), so every process gets the same ids.
    """
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    for ch in alphabet:
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[Any] = []
    for word in WORDS:
        pieces = [*word[:-1], word[-1] + "</w>"]
        cur = pieces[0]
        for piece in pieces[1:]:
            merges.append((cur, piece))
            cur += piece
            vocab.setdefault(cur, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)), model_max_length=77)


def bert_tokenizer(specials: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"),
                   bos_token: str | None = None, continuations: bool = True, model_max_length: int = 77) -> Any:
    """A BERT WordPiece tokenizer built in memory: the corpus words, then single characters (with
    their `##` continuations when asked) so any ASCII text tokenizes.

    HunyuanDiT's Chinese CLIP text tower uses the defaults (77 tokens); BLIP's captioner adds a
    `[DEC]` start token (`bos_token`).
    """
    from transformers import BertTokenizer

    vocab = {tok: i for i, tok in enumerate(specials)}
    chars = string.ascii_lowercase + string.digits + string.punctuation
    extra = [*WORDS, *chars, *(("##" + c for c in chars) if continuations else ())]
    for tok in extra:
        vocab.setdefault(tok, len(vocab))
    kwargs: dict[str, Any] = {"bos_token": bos_token} if bos_token else {}
    return BertTokenizer(vocab=vocab, model_max_length=model_max_length, **kwargs)
