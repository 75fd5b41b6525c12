"""Lyrics text -> DiffRhythm phone tokens: English through espeak-ng, Mandarin through pypinyin.

A line is split into runs by script, as the published tokenizer does: Han characters
(U+4E00-U+9FA5) are Mandarin, ASCII letters English, and anything else (spaces, digits,
punctuation, other scripts) joins the run it sits in. A line with neither Han characters nor ASCII
letters has no language the model knows: `UnsupportedLanguage`.

English: abbreviations and numbers spelled out (num2words), punctuation normalised, espeak-ng
`en-us` IPA without stress (phonemizer, with espeak-ng from espeakng-loader), DiffRhythm's phone
merges (`t ɹ` -> `tɹ`, `ɐ` -> `ɚ`, ...), a word-end `_` after a final sounding phone (removed when
the line ends in English, as published).
Mandarin: digits read as Chinese numerals, jieba words, pypinyin syllables with its tone sandhi
(不, 一, third tone) and a neutral-tone 儿 suffix, then each syllable as an initial token and a
final-with-tone token. The published pipeline reaches the same phones through a 15 MB lexicon and
an optional polyphone BERT (ONNX); pypinyin's phrase dictionary stands in for both here.
"""

# ruff: noqa: RUF001  (IPA and CJK punctuation are the point)
from __future__ import annotations

import logging
import re
from typing import Any

from deployments.diffrhythm import pinyin
from deployments.diffrhythm.vocab import TOKEN_IDS

PUNCTUATION = ",.?!;:'…"
_FULLWIDTH = {"，": ",", "。": ".", "！": "!", "？": "?", "；": ";", "：": ":", "、": ",", "‘": "'", "’": "'",
              "⋯": "…", "···": "…", "・・・": "…", "...": "…"}
_ABBREVIATIONS = {"mrs": "misess", "mr": "mister", "dr": "doctor", "st": "saint", "co": "company", "jr": "junior",
                  "maj": "major", "gen": "general", "drs": "doctors", "rev": "reverend", "lt": "lieutenant",
                  "hon": "honorable", "sgt": "sergeant", "capt": "captain", "esq": "esquire", "ltd": "limited",
                  "col": "colonel", "ft": "fort", "etc": "et cetera", "btw": "by the way"}
_ABBREVIATION = re.compile(r"\b(" + "|".join(_ABBREVIATIONS) + r")\b", re.IGNORECASE)
# DiffRhythm's merges of espeak phones into its inventory, applied between phone boundaries.
_MERGES = [("t|ɹ", "tɹ"), ("d|ɹ", "dɹ"), ("t|s", "ts"), ("d|z", "dz"), ("ɪ|ɹ", "ɪɹ"), ("ɐ", "ɚ"), ("ᵻ", "ɪ"),
           ("əl", "l"), ("x", "k"), ("ɬ", "l"), ("ʔ", "t"), ("n̩", "n"), ("oː|ɹ", "oːɹ")]
_SOUNDING_END = set("p⁼ʰmftnlkxʃs`ɹaoəɛɪeɑʊŋiuɥwæjː")


class UnsupportedLanguage(ValueError):
    """A lyric line whose script the model has no phones for."""


def _is_han(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fa5"


def _is_latin(ch: str) -> bool:
    return ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def segments(text: str) -> list[tuple[str, str]]:
    """`[(run, "zh" | "en" | "other")]`: script runs; neutral characters join the current run."""
    runs: list[tuple[str, str]] = []
    current, lang = "", "other"
    for ch in text:
        kind = "zh" if _is_han(ch) else "en" if _is_latin(ch) else "other"
        if kind == "other" or kind == lang or lang == "other":
            current += ch
            lang = kind if lang == "other" else lang
        else:
            runs.append((current, lang))
            current, lang = ch, kind
    if current:
        runs.append((current, lang))
    return runs


def normalise_punctuation(text: str) -> str:
    for full, ascii_ in _FULLWIDTH.items():
        text = text.replace(full, ascii_)
    return text


def _spell_number(match: re.Match[str]) -> str:
    from num2words import num2words

    token = match.group(0).replace(",", "")
    if token.endswith("%"):
        return f" {num2words(float(token[:-1]) if '.' in token else int(token[:-1]))} percent "
    if re.fullmatch(r"\d+(st|nd|rd|th)", token):
        return f" {num2words(int(token[:-2]), to='ordinal')} "
    if "." in token:
        return f" {num2words(float(token))} "
    value = int(token)
    return f" {num2words(value, to='year') if 1000 < value < 3000 else num2words(value)} "


def normalise_english(text: str) -> str:
    """Abbreviations and numbers in words, other symbols dropped, punctuation tight to its word."""
    text = _ABBREVIATION.sub(lambda m: _ABBREVIATIONS[m.group(1).lower()], text)
    text = re.sub(r"£(\d[\d,]*)", r"\1 pounds", text)
    text = re.sub(r"\$(\d[\d,]*(?:\.\d+)?)", r"\1 dollars", text)
    text = re.sub(r"\d[\d,]*(?:\.\d+)?(?:%|st|nd|rd|th)?", _spell_number, text)
    text = normalise_punctuation(text.strip())
    text = re.sub(r"[^\w\s_,.?!;:'…]", "", text)
    text = re.sub(r"\s*([,.?!;:'…])\s*", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


def merge_phones(phones: str) -> str:
    """Apply DiffRhythm's merges wherever a pattern stands between phone boundaries."""
    for pattern, merged in _MERGES:
        regex = re.compile(r"(^|[_|])" + re.escape(pattern) + r"([_|]|$)")
        replacement = r"\g<1>" + merged.replace("\\", "\\\\") + r"\g<2>"
        while regex.search(phones):
            phones = regex.sub(replacement, phones)
    return phones


class G2P:
    """Text -> token ids; espeak-ng and jieba are loaded once, at construction."""

    def __init__(self) -> None:
        import espeakng_loader
        import jieba
        from phonemizer.backend import EspeakBackend
        from phonemizer.backend.espeak.wrapper import EspeakWrapper
        from phonemizer.separator import Separator

        EspeakWrapper.set_library(espeakng_loader.get_library_path())
        EspeakWrapper.set_data_path(espeakng_loader.get_data_path())
        self._espeak = EspeakBackend("en-us", punctuation_marks=PUNCTUATION, preserve_punctuation=True,
                                     with_stress=False, tie=False, language_switch="remove-flags",
                                     words_mismatch="ignore", logger=logging.getLogger("phonemizer.quiet"))
        self._separator = Separator(word="|_|", syllable="-", phone="|")
        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()
        self._jieba: Any = jieba

    def english_phones(self, text: str) -> str:
        """`|`-separated phones of an English run (before the line-final `_` rule)."""
        text = normalise_english(text)
        if not text:
            return ""
        phones = self._espeak.phonemize([text], separator=self._separator, strip=True, njobs=1)[0]
        phones = re.sub(r"([,.?!;:'…])", r"|\1|", phones)
        phones = re.sub(r"\|+", "|", phones).strip("|")
        if phones and phones[-1] in _SOUNDING_END:
            phones += "|_"
        return merge_phones(phones)

    def mandarin_phones(self, text: str) -> str:
        """`|`-separated phones of a Mandarin run."""
        text = normalise_punctuation(pinyin.digits_to_chinese(text))
        text = re.sub(r"[^\u4e00-\u9fff,.?!;:'…]", "", text)
        words = self._jieba.lcut(text, cut_all=False)
        return "|".join(pinyin.phones_of_words(words))

    def tokens(self, text: str) -> list[int]:
        """Token ids (1..363) of one lyric line; unknown phones are skipped, as published.

        Raises:
            UnsupportedLanguage: a run with neither Han characters nor ASCII letters.
        """
        out: list[int] = []
        runs = segments(text)
        for i, (run, lang) in enumerate(runs):
            if lang == "other":
                if not run.strip(" \t" + PUNCTUATION + "，。！？、；："):
                    continue  # spacing or punctuation only: nothing to sing
                raise UnsupportedLanguage(f"no supported language in {run!r}")
            phones = self.english_phones(run) if lang == "en" else self.mandarin_phones(run)
            ids = [TOKEN_IDS[p] for p in phones.split("|") if p in TOKEN_IDS]
            if lang == "en" and i == len(runs) - 1 and phones.endswith("_"):
                ids = ids[:-1]
            out += ids
        return out
