"""The tag palette catalogue and the tag linter (playground.tags)."""
from __future__ import annotations

import pytest

from playground.tags import PALETTE, find_tags, lint
from playground.ui.text import load_examples


def test_palette_groups_cover_the_issue_and_every_tag_lints_clean() -> None:
    assert [g.name for g in PALETTE] == ["Emotion", "Sounds", "Voice & volume", "Pauses & pacing", "Speakers"]
    inserts = [t.insert for g in PALETTE for t in g.tags]
    assert len(inserts) == len(set(inserts))
    assert {"[whisper]", "[laughing]", "[pause]", "[volume up]", "<|speaker:1|>"} <= set(inserts)
    for tag in inserts:
        assert lint(f"{tag} Hello there, how are you today?") == [], tag


def test_examples_showcase_tags_and_speakers_without_problems() -> None:
    examples = load_examples()
    assert len(examples) >= 4
    assert any("<|speaker:1|>" in e["text"] for e in examples)
    for e in examples:
        assert lint(e["text"]) == [], e["title"]
        assert find_tags(e["text"]), e["title"]


def test_clean_text_has_no_problems() -> None:
    assert lint("") == []
    assert lint("Plain text (with an aside) and numbers [1] are fine.") == []
    assert lint("<|speaker:0|>Hi! [laughing] Really?\n<|speaker:1|>[whisper] Yes.") == []


@pytest.mark.parametrize("text, position", [
    ("Hello [whisper there", "character 7"),
    ("[sad] ok [long pause", "character 10"),
    ("one [a\ntwo", "line 1"),
    ("[fine]\n[broken\n", "line 2"),
])
def test_unclosed_bracket_is_flagged_with_its_position(text: str, position: str) -> None:
    problems = lint(text)
    assert len(problems) == 1 and problems[0].startswith(f"Unclosed bracket at {position}")


def test_stray_closing_bracket() -> None:
    assert lint("oops ] here") == ["Stray ] at character 6 with no [ before it"]


def test_old_paren_style_suggests_square_brackets() -> None:
    problems = lint("(excited) We won! (in a hurry tone) Quick. (see the notes)")
    assert len(problems) == 2
    assert "[excited]" in problems[0] and "[in a hurry tone]" in problems[1]


@pytest.mark.parametrize("tag", ["<speaker:1>", "<|speaker 1|>", "<|Speaker:1|>", "<|speaker:1>", "[speaker:2]",
                                 "<|speaker:a|>"])
def test_malformed_speaker_tags(tag: str) -> None:
    problems = lint(f"{tag} Hello there friend.")
    assert len(problems) == 1 and "<|speaker:N|>" in problems[0], problems


def test_unclosed_speaker_tag_and_control_tokens() -> None:
    assert lint("<|speaker:1 hello")[0].startswith("Unclosed tag at character 1")
    problems = lint("Hello <|im_end|> there")
    assert problems == ["“<|im_end|>” at character 7 is a control token: the model reads it as plain text; "
                        "remove it"]


def test_empty_tag() -> None:
    assert lint("[] hello there") == ["Empty tag “[]” at character 1: put a word inside or remove it"]


def test_dense_tagging() -> None:
    dense = lint("[happy] Hi [sad] there [angry] you [calm] ok")
    assert len(dense) == 1 and dense[0].startswith("Very dense tagging: 4 tags for 4 spoken words")
    assert lint("[happy] Hi there, how are you? [sad] I am fine thanks. [calm] Good to hear that. [sigh] Well.") == []


def test_runs_of_tags_are_flagged_once_per_run() -> None:
    problems = lint("[excited][joyful] [loud] Hello there, everyone, welcome to the show tonight, friends.")
    assert problems == ["3 tags in a row at character 1: combine them into one, e.g. [excited, joyful tone]"]
    assert lint("[a] [b] Hello there my good friends, how are you doing?") == []


def test_find_tags_in_order() -> None:
    assert find_tags("<|speaker:0|>Hi [laughing] yes <|speaker:1|>[whisper] no") == [
        "<|speaker:0|>", "[laughing]", "<|speaker:1|>", "[whisper]"]
