"""Kokoro's language pipelines (grapheme-to-phoneme, G2P) built without any download at run time.

- English (misaki `en.G2P`): misaki looks up a spaCy pipeline by name (`en_core_web_sm`) and calls
  `spacy.cli.download` when it is not installed. Here the spaCy pipeline is chosen up front and
  handed to misaki: the installed package named in the config (prod: `en_core_web_sm`, whose
  part-of-speech tags pick between homographs such as "read"), or, with `spacy_model: null`, a
  blank English tokenizer plus a rule-based punctuation tagger (misaki needs the tags to keep
  pauses). A named package that is not installed fails the replica at start; nothing is fetched.
  Words outside misaki's lexicon go to espeak-ng, which `espeakng-loader` ships with its data.
- Japanese (misaki `ja.JAG2P`, cutlet): MeCab through `fugashi` with the `unidic-lite` dictionary
  from PyPI (the full `unidic` package would download ~500 MB on first use); misaki also imports
  `pyopenjtalk`, provided by `pyopenjtalk-plus`, which bundles its dictionary.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from deployments.kokoro.presets import KOKORO_ID

LANG_CODES = {"american-english": "a", "british-english": "b", "japanese": "j"}

# Penn Treebank tags that misaki reads to phonemise punctuation (what `en_core_web_sm` would tag).
PUNCTUATION_TAGS = {
    ".": ".", "!": ".", "?": ".", ",": ",", ";": ":", ":": ":", "—": ":", "…": ":", "-": ":", "\u2013": ":",
    "(": "-LRB-", ")": "-RRB-", "“": "``", "”": "''", '"': "''",
}
_TAGGER = "kokoro_punctuation_tagger"
_PATCH_LOCK = threading.Lock()


def _tag_punctuation(doc: Any) -> Any:
    for token in doc:
        tag = PUNCTUATION_TAGS.get(token.text)
        if tag is not None:
            token.tag_ = tag
    return doc


def english_nlp(spacy_model: str | None) -> Any:
    """The spaCy pipeline for English G2P: an installed package, or a blank one (see module doc)."""
    import spacy
    from spacy.language import Language

    if spacy_model is not None:
        if not spacy.util.is_package(spacy_model):
            raise RuntimeError(
                f"spaCy pipeline {spacy_model!r} is not installed and is never downloaded at run time: "
                f"install it (see README, Kokoro) or set `spacy_model: null` for the blank tokenizer")
        return spacy.load(spacy_model, enable=["tok2vec", "tagger"])
    if not Language.has_factory(_TAGGER):
        Language.component(_TAGGER, func=_tag_punctuation)
    nlp = spacy.blank("en")
    nlp.add_pipe(_TAGGER)
    return nlp


@contextlib.contextmanager
def _misaki_uses(nlp: Any) -> Iterator[None]:
    """While misaki's English G2P is constructed, make its spaCy look-up return `nlp`.

    misaki (pinned 0.9.4) resolves the pipeline by name in `G2P.__init__`, with no way to pass one
    in; the patch is scoped to that constructor call and refuses downloads outright.
    """
    import misaki.en

    spacy = misaki.en.spacy

    def refuse_download(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Kokoro's G2P never downloads spaCy pipelines at run time")

    patches = [(spacy, "load", lambda name, **kwargs: nlp), (spacy.util, "is_package", lambda name: True),
               (spacy.cli, "download", refuse_download)]
    with _PATCH_LOCK:
        saved = [(target, name, getattr(target, name)) for target, name, _ in patches]
        try:
            for target, name, value in patches:
                setattr(target, name, value)
            yield
        finally:
            for target, name, value in saved:
                setattr(target, name, value)


def build_pipelines(model: Any, spacy_model: str | None) -> dict[str, Any]:
    """One `KPipeline` per language endpoint, all sharing `model`."""
    from kokoro import KPipeline

    nlp = english_nlp(spacy_model)
    pipelines: dict[str, Any] = {}
    for language, code in LANG_CODES.items():
        if code in "ab":
            with _misaki_uses(nlp):
                pipelines[language] = KPipeline(lang_code=code, repo_id=KOKORO_ID, model=model)
        else:
            pipelines[language] = KPipeline(lang_code=code, repo_id=KOKORO_ID, model=model)
    return pipelines
