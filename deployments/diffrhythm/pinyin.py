"""Mandarin words -> DiffRhythm phones, by way of pypinyin's numbered-tone syllables.

DiffRhythm writes a syllable as its initial (aspiration marked: `p⁼` for b, `pʰ` for p, `ts`⁼` for
zh, ...) followed by its final carrying the tone (`a→` tone 1, `a↑` 2, `a↓↑` 3, `a↓` 4, bare `a`
neutral). Two kinds of syllable are one token: b/p/m/f + o (`p⁼wo↑`), and the apical vowel after
z/c/s/zh/ch/sh/r (`ts`⁼ɹ↓` for zhi4). The tables below are that phone inventory (zhuyin
order), written for pinyin spellings.
"""

# ruff: noqa: RUF001  (IPA and CJK are the point)
from __future__ import annotations

import re

INITIALS = {"b": "p⁼", "p": "pʰ", "m": "m", "f": "f", "d": "t⁼", "t": "tʰ", "n": "n", "l": "l", "g": "k⁼",
            "k": "kʰ", "h": "x", "j": "tʃ⁼", "q": "tʃʰ", "x": "ʃ", "zh": "ts`⁼", "ch": "ts`ʰ", "sh": "s`",
            "r": "ɹ`", "z": "ts⁼", "c": "tsʰ", "s": "s"}
FINALS = {"a": "a", "o": "o", "e": "ə", "ê": "ɛ", "ai": "aɪ", "ei": "eɪ", "ao": "ɑʊ", "ou": "oʊ", "an": "an",
          "en": "ən", "ang": "ɑŋ", "eng": "əŋ", "er": "əɹ", "ong": "ʊŋ", "i": "i", "ia": "ia", "ie": "iɛ",
          "iao": "iɑʊ", "iu": "ioʊ", "ian": "jɛn", "in": "in", "iang": "iɑŋ", "ing": "iŋ", "iong": "jʊŋ", "u": "u",
          "ua": "ua", "uo": "uo", "uai": "uaɪ", "ui": "ueɪ", "uan": "uan", "un": "uən", "uang": "uɑŋ",
          "ueng": "ʊŋ", "ü": "ɥ", "üe": "ɥɛ", "üan": "ɥæn", "ün": "ɥn", "n": "ən", "ng": "əŋ"}
# Zero-initial spellings (y-, w-) -> the final they write.
ZERO_INITIAL = {"yi": "i", "ya": "ia", "ye": "ie", "yao": "iao", "you": "iu", "yan": "ian", "yin": "in",
                "yang": "iang", "ying": "ing", "yong": "iong", "yu": "ü", "yue": "üe", "yuan": "üan", "yun": "ün",
                "wu": "u", "wa": "ua", "wo": "uo", "wai": "uai", "wei": "ui", "wan": "uan", "wen": "un",
                "wang": "uang", "weng": "ueng", "yo": "io"}
TONES = {"1": "→", "2": "↑", "3": "↓↑", "4": "↓", "5": ""}
APICAL = ("zh", "ch", "sh", "r", "z", "c", "s")
LABIAL_O = {"b": "p⁼wo", "p": "pʰwo", "m": "mwo", "f": "fwo"}
NOT_ERHUA = {"女儿", "老儿", "男儿", "少儿", "小儿"}
SYLLABLE = re.compile(r"^([a-zü]+?)([1-5])$")
DIGITS = "零一二三四五六七八九"


def _split(syllable: str) -> tuple[str, str]:
    """`zhong` -> (`zh`, `ong`); `yuan` -> (``, `üan`); `ju` -> (`j`, `ü`)."""
    if syllable in ZERO_INITIAL:
        return "", ZERO_INITIAL[syllable]
    for size in (2, 1):
        head = syllable[:size]
        if head in INITIALS and (size == 2 or syllable[:2] not in INITIALS):
            final = syllable[size:]
            if head in ("j", "q", "x") and final.startswith("u"):
                final = "ü" + final[1:]
            elif head in ("l", "n") and final == "ue":
                final = "üe"
            return head, final
    return "", syllable


def syllable_phones(syllable: str) -> list[str]:
    """Phones of one numbered-tone syllable (`zhong1` -> [`ts`⁼`, `ʊŋ→`]); [] when unknown."""
    match = SYLLABLE.match(syllable.lower().replace("v", "ü"))
    if not match:
        return []
    body, tone = match.group(1), TONES[match.group(2)]
    if body in ("n", "ng", "m"):  # syllabic nasals (嗯, 呣)
        return [FINALS["n"] + tone] if body != "m" else ["m"]
    initial, final = _split(body)
    if initial in LABIAL_O and final == "o":
        return [LABIAL_O[initial] + tone]
    if initial in APICAL and final == "i":
        return [INITIALS[initial] + "ɹ" + tone]
    if final == "io":  # yo: no single final in the inventory
        return ["i", "o" + tone]
    if final not in FINALS:
        return []
    head = [INITIALS[initial]] if initial else []
    return [*head, FINALS[final] + tone]


def phones_of_words(words: list[str]) -> list[str]:
    """Phones of jieba words: syllables through pypinyin (tone sandhi on), punctuation kept."""
    from pypinyin import Style, lazy_pinyin

    phones: list[str] = []
    for word in words:
        if not re.search("[\u4e00-\u9fff]", word):
            phones += [ch for ch in word if ch in ",.?!;:'…"]
            continue
        syllables = lazy_pinyin(word, style=Style.TONE3, neutral_tone_with_five=True, tone_sandhi=True)
        if len(word) > 1 and word.endswith("儿") and word not in NOT_ERHUA and syllables:
            syllables[-1] = syllables[-1][:-1] + "5"  # a suffixed 儿 is unstressed
        for syllable in syllables:
            phones += syllable_phones(syllable)
    return phones


def _below_10000(n: int) -> str:
    out, zero = "", False
    for value, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        digit = n // value % 10
        if digit:
            out += ("零" if zero and out else "") + DIGITS[digit] + unit
            zero = False
        else:
            zero = True
    return out


def integer_to_chinese(n: int) -> str:
    """`2024` -> 二千零二十四; `15` -> 十五; `10005` -> 一万零五; groups of 万 and 亿 above 9999."""
    if n == 0:
        return "零"
    if n >= 10**16:  # beyond 万亿: read digit by digit
        return "".join(DIGITS[int(d)] for d in str(n))
    groups = []
    while n:
        groups.append(n % 10000)
        n //= 10000
    out, gap = "", False
    for index in range(len(groups) - 1, -1, -1):
        group = groups[index]
        if group == 0:
            gap = bool(out)
            continue
        if out and (gap or group < 1000):
            out += "零"
        out += _below_10000(group) + ("", "万", "亿", "万亿")[index]
        gap = False
    return out[1:] if out.startswith("一十") else out


def digits_to_chinese(text: str) -> str:
    """Numbers in a Mandarin run read as Chinese numerals (decimals digit by digit after 点)."""

    def convert(match: re.Match[str]) -> str:
        whole, _, fraction = match.group(0).partition(".")
        out = integer_to_chinese(int(whole))
        return out + ("点" + "".join(DIGITS[int(d)] for d in fraction) if fraction else "")

    return re.sub(r"\d+(?:\.\d+)?", convert, text)
