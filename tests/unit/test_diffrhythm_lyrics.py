"""DiffRhythm lyrics: LRC parsing, the frame-aligned layout, English (espeak-ng) and Mandarin
(pypinyin) phones, and the phone vocabulary."""

# ruff: noqa: RUF001  (IPA and CJK are the point)
from __future__ import annotations

import pytest

from deployments.diffrhythm import lyrics, pinyin
from deployments.diffrhythm.g2p import G2P, UnsupportedLanguage, merge_phones, normalise_english, segments
from deployments.diffrhythm.vocab import COMMA_TOKEN, NUM_PHONES, PERIOD_TOKEN, PHONES, TOKEN_IDS


@pytest.fixture(scope="module")
def g2p() -> G2P:
    return G2P()


def phones(g2p: G2P, text: str) -> str:
    return "|".join(PHONES[t - 1] for t in g2p.tokens(text))


def test_vocabulary_is_the_published_one() -> None:
    assert NUM_PHONES == 363 and len(TOKEN_IDS) == 363
    assert (COMMA_TOKEN, PERIOD_TOKEN) == (1, 2)  # the published layout's comma and period ids
    assert TOKEN_IDS["p⁼"] == 76 and TOKEN_IDS["ts`⁼ɹ↓"] == 288 and TOKEN_IDS["…"] == 363
    assert TOKEN_IDS["ç"] != TOKEN_IDS["c\u0327"]  # two spellings, two ids, as published


def test_parse_lrc_reads_stamps_and_skips_the_rest() -> None:
    text = "[ti:Song]\n[00:01.50]First line\n\nno stamp\n[1:02]Second\n[00:03.125] Third  \n[00:04.00]"
    assert lyrics.parse_lrc(text) == [lyrics.LyricLine(1.5, "First line"), lyrics.LyricLine(62.0, "Second"),
                                      lyrics.LyricLine(3.125, "Third"), lyrics.LyricLine(4.0, "")]


def test_layout_places_lines_at_their_frames_without_overlap() -> None:
    rate = lyrics.FRAMES_PER_SECOND
    timed = [(0.0, [10, 11, PERIOD_TOKEN, 12]), (1 / rate, [20]), (3 / rate, [30, 31]), (99.0, [40])]
    out = lyrics.layout(timed, 12)
    # line 1: a period inside a line becomes a comma, and a period closes it
    assert out[:5] == [10, 11, COMMA_TOKEN, 12, PERIOD_TOKEN]
    # line 2 is due at frame 1 but starts where line 1 ended; line 3 follows it
    assert out[5:7] == [20, PERIOD_TOKEN] and out[7:10] == [30, 31, PERIOD_TOKEN]
    assert out[10:] == [0, 0] and len(out) == 12  # the line at 99 s is past the song's end
    assert lyrics.layout([(0.0, [5, 6, 7, 8])], 3) == [5, 6, 7]  # cut at the last frame


def test_95s_and_285s_frame_counts() -> None:
    assert round(2048 / lyrics.FRAMES_PER_SECOND, 1) == 95.1
    assert int(285 * lyrics.FRAMES_PER_SECOND) == 6136


def test_segments_split_scripts_and_attach_neutral_characters() -> None:
    assert segments("你好，hello world") == [("你好，", "zh"), ("hello world", "en")]
    assert segments("  hi 你") == [("  hi ", "en"), ("你", "zh")]
    assert segments("123") == [("123", "other")]


def test_english_phones(g2p: G2P) -> None:
    # espeak-ng en-us without stress, DiffRhythm's merges, and no word-end mark at the line's end
    assert phones(g2p, "Hello world, it's a test.") == "h|ə|l|oʊ|_|w|ɜː|l|d|,|ɪ|t|'|ɛ|s|_|ɚ|_|t|ɛ|s|t|."
    assert phones(g2p, "try") == "tɹ|aɪ"  # t + ɹ merged
    assert phones(g2p, "Hello").endswith("oʊ")


def test_english_normalisation() -> None:
    assert normalise_english("Dr. Who in 1999 & 3rd — 50%") == "doctor.Who in nineteen ninetynine third fifty percent"
    assert normalise_english("21st, $5 and 1,000,000") == "twentyfirst,five dollars and one million"
    assert merge_phones("t|ɹ|aɪ|_|d|ɹ") == "tɹ|aɪ|_|dɹ"


def test_mandarin_phones(g2p: G2P) -> None:
    # third-tone sandhi (你 ni3 -> ni2), initials with aspiration marks, tone arrows on finals
    assert phones(g2p, "你好") == "n|i↑|x|ɑʊ↓↑"
    assert phones(g2p, "不要") == "p⁼|u↑|iɑʊ↓"  # 不 before a fourth tone
    assert phones(g2p, "十四") == "s`ɹ↑|sɹ↓"  # apical vowels are one token with their initial
    assert phones(g2p, "我在2024年").startswith("uo↓↑|ts⁼|aɪ↓|əɹ↓|tʃʰ|jɛn→")  # digits read in Chinese
    assert phones(g2p, "你好，hello") == "n|i↑|x|ɑʊ↓↑|,|h|ə|l|oʊ"


@pytest.mark.parametrize(("syllable", "expected"), [
    ("zhong1", ["ts`⁼", "ʊŋ→"]), ("yuan2", ["ɥæn↑"]), ("ju4", ["tʃ⁼", "ɥ↓"]), ("lv4", ["l", "ɥ↓"]),
    ("lue4", ["l", "ɥɛ↓"]), ("bo2", ["p⁼wo↑"]), ("ri4", ["ɹ`ɹ↓"]), ("de5", ["t⁼", "ə"]), ("xiong2", ["ʃ", "jʊŋ↑"]),
    ("dui4", ["t⁼", "ueɪ↓"]), ("weng1", ["ʊŋ→"]), ("n2", ["ən↑"]), ("xyz9", []),
])
def test_pinyin_syllables(syllable: str, expected: list[str]) -> None:
    got = pinyin.syllable_phones(syllable)
    assert got == expected and all(p in TOKEN_IDS for p in got)


@pytest.mark.parametrize(("number", "text"), [(0, "零"), (15, "十五"), (110, "一百一十"), (1005, "一千零五"),
                                              (2024, "二千零二十四"), (10005, "一万零五"), (100010000, "一亿零一万")])
def test_chinese_numerals(number: int, text: str) -> None:
    assert pinyin.integer_to_chinese(number) == text


@pytest.mark.parametrize("line", ["안녕하세요", "Привет", "123", "こんにちは"])
def test_lines_without_english_or_chinese_are_unsupported(g2p: G2P, line: str) -> None:
    with pytest.raises(UnsupportedLanguage):
        g2p.tokens(line)


def test_punctuation_only_lines_sing_nothing(g2p: G2P) -> None:
    assert g2p.tokens("...") == [] and g2p.tokens("！") == []
