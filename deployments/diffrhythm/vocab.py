"""DiffRhythm's phone vocabulary: 363 symbols, listed in id order.

The published tokenizer (`g2p/g2p/vocab.json` in ASLP-lab/DiffRhythm) maps a phone to its index
here; the DiT's text embedding reserves id 0 for "no lyric at this frame", so a phone's token id is
its index + 1 (embedding rows 1..363). Ids 0-74 are English (espeak IPA after DiffRhythm's merges),
75-317 Mandarin (initials, and finals carrying their tone: → 1, ↑ 2, ↓↑ 3, ↓ 4, none for the
neutral tone), the rest other languages' phones that this service never produces.
"""

# ruff: noqa: RUF001  (IPA: letters that look like ASCII ones are the point)
from __future__ import annotations

PHONES: tuple[str, ...] = (
    ",", ".", "?", "!", "_", "iː", "ɪ", "ɜː", "ɚ", "oːɹ", "ɔː", "ɔːɹ", "ɑː", "uː", "ʊ", "ɑːɹ", "ʌ", "ɛ", "æ", "eɪ",
    "aɪ", "ɔɪ", "aʊ", "oʊ", "ɪɹ", "ɛɹ", "ʊɹ", "p", "b", "t", "d", "k", "ɡ", "f", "v", "θ", "ð", "s", "z", "ʃ", "ʒ",
    "h", "tʃ", "dʒ", "m", "n", "ŋ", "j", "w", "ɹ", "l", "tɹ", "dɹ", "ts", "dz", "i", "ɔ", "ə", "ɾ", "iə", "r", "u",
    "oː", "ɛː", "ɪː", "aɪə", "aɪɚ", "ɑ̃", "ç", "ɔ̃", "ææ", "ɐɐ", "ɡʲ", "nʲ", "iːː", "p⁼", "pʰ", "t⁼", "tʰ", "k⁼",
    "kʰ", "x", "tʃ⁼", "tʃʰ", "ts`⁼", "ts`ʰ", "s`", "ɹ`", "ts⁼", "tsʰ", "p⁼wo", "p⁼wo→", "p⁼wo↑", "p⁼wo↓↑", "p⁼wo↓",
    "pʰwo", "pʰwo→", "pʰwo↑", "pʰwo↓↑", "pʰwo↓", "mwo", "mwo→", "mwo↑", "mwo↓↑", "mwo↓", "fwo", "fwo→", "fwo↑",
    "fwo↓↑", "fwo↓", "jɛn", "jɛn→", "jɛn↑", "jɛn↓↑", "jɛn↓", "ɥæn", "ɥæn→", "ɥæn↑", "ɥæn↓↑", "ɥæn↓", "in", "in→",
    "in↑", "in↓↑", "in↓", "ɥn", "ɥn→", "ɥn↑", "ɥn↓↑", "ɥn↓", "iŋ", "iŋ→", "iŋ↑", "iŋ↓↑", "iŋ↓", "ʊŋ", "ʊŋ→", "ʊŋ↑",
    "ʊŋ↓↑", "ʊŋ↓", "jʊŋ", "jʊŋ→", "jʊŋ↑", "jʊŋ↓↑", "jʊŋ↓", "ia", "ia→", "ia↑", "ia↓↑", "ia↓", "iɛ", "iɛ→", "iɛ↑",
    "iɛ↓↑", "iɛ↓", "iɑʊ", "iɑʊ→", "iɑʊ↑", "iɑʊ↓↑", "iɑʊ↓", "ioʊ", "ioʊ→", "ioʊ↑", "ioʊ↓↑", "ioʊ↓", "iɑŋ", "iɑŋ→",
    "iɑŋ↑", "iɑŋ↓↑", "iɑŋ↓", "ua", "ua→", "ua↑", "ua↓↑", "ua↓", "uo", "uo→", "uo↑", "uo↓↑", "uo↓", "uaɪ", "uaɪ→",
    "uaɪ↑", "uaɪ↓↑", "uaɪ↓", "ueɪ", "ueɪ→", "ueɪ↑", "ueɪ↓↑", "ueɪ↓", "uan", "uan→", "uan↑", "uan↓↑", "uan↓", "uən",
    "uən→", "uən↑", "uən↓↑", "uən↓", "uɑŋ", "uɑŋ→", "uɑŋ↑", "uɑŋ↓↑", "uɑŋ↓", "ɥɛ", "ɥɛ→", "ɥɛ↑", "ɥɛ↓↑", "ɥɛ↓", "a",
    "a→", "a↑", "a↓↑", "a↓", "o", "o→", "o↑", "o↓↑", "o↓", "ə→", "ə↑", "ə↓↑", "ə↓", "ɛ→", "ɛ↑", "ɛ↓↑", "ɛ↓", "aɪ→",
    "aɪ↑", "aɪ↓↑", "aɪ↓", "eɪ→", "eɪ↑", "eɪ↓↑", "eɪ↓", "ɑʊ", "ɑʊ→", "ɑʊ↑", "ɑʊ↓↑", "ɑʊ↓", "oʊ→", "oʊ↑", "oʊ↓↑",
    "oʊ↓", "an", "an→", "an↑", "an↓↑", "an↓", "ən", "ən→", "ən↑", "ən↓↑", "ən↓", "ɑŋ", "ɑŋ→", "ɑŋ↑", "ɑŋ↓↑", "ɑŋ↓",
    "əŋ", "əŋ→", "əŋ↑", "əŋ↓↑", "əŋ↓", "əɹ", "əɹ→", "əɹ↑", "əɹ↓↑", "əɹ↓", "i→", "i↑", "i↓↑", "i↓", "u→", "u↑", "u↓↑",
    "u↓", "ɥ", "ɥ→", "ɥ↑", "ɥ↓↑", "ɥ↓", "ts`⁼ɹ", "ts`⁼ɹ→", "ts`⁼ɹ↑", "ts`⁼ɹ↓↑", "ts`⁼ɹ↓", "ts`ʰɹ", "ts`ʰɹ→",
    "ts`ʰɹ↑", "ts`ʰɹ↓↑", "ts`ʰɹ↓", "s`ɹ", "s`ɹ→", "s`ɹ↑", "s`ɹ↓↑", "s`ɹ↓", "ɹ`ɹ", "ɹ`ɹ→", "ɹ`ɹ↑", "ɹ`ɹ↓↑", "ɹ`ɹ↓",
    "ts⁼ɹ", "ts⁼ɹ→", "ts⁼ɹ↑", "ts⁼ɹ↓↑", "ts⁼ɹ↓", "tsʰɹ", "tsʰɹ→", "tsʰɹ↑", "tsʰɹ↓↑", "tsʰɹ↓", "sɹ", "sɹ→", "sɹ↑",
    "sɹ↓↑", "sɹ↓", "ɯ", "e", "aː", "ɯː", "eː", "ç", "ɸ", "ɰᵝ", "ɴ", "g", "dʑ", "q", "ː", "bj", "tɕ", "dej", "tej",
    "gj", "gɯ", "çj", "kj", "kɯ", "mj", "nj", "pj", "ɾj", "ɕ", "tsɯ", "ɐ", "ɑ", "ɒ", "ɜ", "ɫ", "ʑ", "ʲ", "y", "ø",
    "œ", "ʁ", "̃", "ɲ", ":", ";", "'", "…",
)

TOKEN_IDS: dict[str, int] = {phone: index + 1 for index, phone in enumerate(PHONES)}
"""Phone -> token id (1..363); 0 is the filler."""

COMMA_TOKEN = TOKEN_IDS[","]  # 1
PERIOD_TOKEN = TOKEN_IDS["."]  # 2
NUM_PHONES = len(PHONES)  # the DiT config's `text_num_embeds`
