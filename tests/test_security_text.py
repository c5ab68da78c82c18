"""No text freezes the server (issue 17, items 2 and 7): every function that user text reaches runs in
linear time on adversarial input at the largest size the server accepts and above, handlers refuse
what is too long, and lone surrogates are a 400, not a 500.

Each test has a small timeout: the quadratic regexes these pin took 10 s and more at 20,000 characters,
so a regression fails here instead of hanging CI. Speed itself is measured in benchmarks, not here.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest

from engine.params import MAX_CHUNK_LENGTH, MAX_TEXT_CHARS, MIN_CHUNK_LENGTH
from engine.prompt import MAX_SPEAKER_DIGITS, MAX_TURNS_PER_CHUNK, split_text
from engine.serving.request import ReferenceInput, SynthesisRequest
from engine.tokenizer import SPEAKER_TAG, TextTokenizer
from playground.api.synthesis import param_of
from playground.tags import find_tags, lint
from playground.ui.text import MAX_LINT_SHOWN, lint_html, preview_html

ABOVE = 2 * MAX_TEXT_CHARS  # what a handler without the limit would have to survive (40 KB froze the preview)
HUGE = 20 * MAX_TEXT_CHARS  # where even a mild quadratic (a second at the limit) would take minutes
SIZES = [MAX_TEXT_CHARS, ABOVE]
TERMINATORS = ".!?…。！？"
# name -> (head, unit repeated to fill the size, tail)
PATTERNS: dict[str, tuple[str, str, str]] = {
    **{f"run of {t}": ("", t, "a") for t in TERMINATORS},
    **{f"period then run of {c}": (".", c, "a") for c in "\"'”)」»"},
    "period-quote pairs": ("", ".'", "a"),
    "letter-period pairs": ("", "a.", ""),
    "two periods and a letter": ("", "..a", ""),
    "sentences": ("", "Hi. ", ""),
    "run of [": ("", "[", ""),
    "run of ]": ("", "]", ""),
    "unclosed [ then letters": ("[", "a", ""),
    "tags": ("", "[a]", ""),
    "empty tags": ("", "[]", ""),
    "tag then spaces": ("[a]", " ", "x"),
    "tags with spaces": ("", "[a] ", ""),
    "run of <|speaker:": ("", "<|speaker:", ""),
    "run of <|speaker:1": ("", "<|speaker:1", ""),
    "speaker tag digits unclosed": ("<|speaker:", "1", ""),
    "alternating speakers": ("", "<|speaker:0|><|speaker:1|>", ""),
    "alternating speakers and spaces": ("", "<|speaker:0|> <|speaker:1|> ", ""),
    "alternating speakers with words": ("", "<|speaker:0|>a <|speaker:1|>b ", ""),
    "run of <|": ("", "<|", ""),
    "unclosed control": ("<|", "a|", ""),
    "run of <": ("", "<", ""),
    "speaker words in <": ("<", "speaker", ""),
    "[speaker then spaces": ("[speaker", " ", "x"),
    "[speaker 1 then spaces": ("[speaker 1", " ", "x"),
    "[speaker then digits": ("[speaker ", "1", ""),
    "run of (": ("", "(", ""),
    "legacy parens": ("", "(sad) ", ""),
    "spaces": ("", " ", "a"),
    "newlines": ("", "\n", "a"),
    "space-newline pairs": ("", " \n", "a"),
    "letters": ("", "a", ""),
    "words": ("", "ab ", ""),
    "commas": ("", ",", "a"),
    "clauses": ("", "a, b; c: ", ""),
    "CJK": ("", "漢", ""),
    "CJK sentences": ("", "漢字。", ""),
}


def _make(name: str, size: int) -> str:
    head, unit, tail = PATTERNS[name]
    body = size - len(head) - len(tail)
    return head + (unit * (body // len(unit) + 1))[:body] + tail


def _content(text: str) -> str:
    """What split_text must keep, in order: everything but whitespace and speaker tags (which it carries)."""
    return re.sub(r"\s+", "", SPEAKER_TAG.sub("", text))


# ---- engine.prompt.split_text ----

@pytest.mark.timeout(10)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", PATTERNS)
def test_split_text_is_fast_and_keeps_every_character(name: str, size: int) -> None:
    text = _make(name, size)
    assert len(text) == size
    for max_chars in (MIN_CHUNK_LENGTH, 300, MAX_CHUNK_LENGTH):
        chunks = split_text(text, max_chars)
        assert all(0 < len(c) <= max_chars for c in chunks), (name, max_chars)
        assert "".join(map(_content, chunks)) == _content(text), (name, max_chars)


@pytest.mark.timeout(5)
@pytest.mark.parametrize("name", ["run of .", "run of !", "run of ?", "run of …", "letters"])
def test_split_text_cuts_an_unbroken_run_into_full_chunks(name: str) -> None:
    # No space after the run (".....a"): no sentence end, clause or word end, so only the last resort cuts.
    text = _make(name, MAX_TEXT_CHARS)
    chunks = split_text(text, 300)
    assert [len(c) for c in chunks] == [300] * (MAX_TEXT_CHARS // 300) + [MAX_TEXT_CHARS % 300]
    assert "".join(chunks) == text


@pytest.mark.timeout(5)
def test_split_text_packs_sentences_and_alternating_speakers() -> None:
    sentences = split_text(_make("sentences", MAX_TEXT_CHARS), 300)
    assert len(sentences) == math.ceil(MAX_TEXT_CHARS / 4 / 75)  # 75 whole "Hi. " per chunk (299 trimmed)
    assert sentences[0] == " ".join(["Hi."] * 75)
    # Every tag changes the speaker but none has anything to say except the words after them.
    turns = split_text(_make("alternating speakers with words", MAX_TEXT_CHARS), 300)
    num_turns = MAX_TEXT_CHARS // len("<|speaker:0|>a <|speaker:1|>b ") * 2 + 1
    assert turns[0] == "<|speaker:0|>a\n<|speaker:1|>b\n<|speaker:0|>a\n<|speaker:1|>b\n<|speaker:0|>a"
    assert len(turns) == math.ceil(num_turns / MAX_TURNS_PER_CHUNK)  # whole turns, 5 to a chunk
    assert split_text("<|speaker:0|><|speaker:1|>" * (ABOVE // 26), 300) == []  # nobody says anything


@pytest.mark.timeout(5)
def test_split_text_refuses_speaker_numbers_too_long_to_carry() -> None:
    ok = f"<|speaker:{'9' * MAX_SPEAKER_DIGITS}|>Hello there."
    assert split_text(ok, MIN_CHUNK_LENGTH) == [ok]
    huge = f"<|speaker:{'9' * MAX_TEXT_CHARS}|>" + "a" * 100  # int() of it alone would be refused
    with pytest.raises(ValueError, match=rf"^text has a speaker tag with a {MAX_TEXT_CHARS}-digit number "
                                         r"at character 1") as err:
        split_text(huge, MIN_CHUNK_LENGTH)
    assert len(str(err.value)) < 200 and param_of(err.value) == "input"


# ---- playground.tags ----

@pytest.mark.timeout(10)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", PATTERNS)
def test_lint_and_find_tags_are_fast_with_short_messages(name: str, size: int) -> None:
    text = _make(name, size)
    problems = lint(text)
    assert all(len(p) < 300 for p in problems), name  # a problem quotes a snippet, never the text
    tags = find_tags(text)
    assert "".join(tags) == "".join(m.group(0) for m in sorted(
        [*re.finditer(r"\[[^\[\]\n]*\]", text), *SPEAKER_TAG.finditer(text)], key=lambda m: m.start()))


@pytest.mark.timeout(5)
@pytest.mark.parametrize("size", SIZES)
def test_lint_counts_on_runs(size: int) -> None:
    assert len(lint(_make("run of ]", size))) == size  # one stray ] each
    assert len(lint(_make("run of [", size))) == size  # each closed by nothing before the next [
    tags = "[a]" * (size // 3)  # all tags, no words: dense, and one "tags in a row"
    assert [p.split(":")[0] for p in lint(tags)] == ["Very dense tagging", "3 tags in a row at character 1"]
    assert find_tags(tags) == ["[a]"] * (size // 3)
    for name in ("[speaker then spaces", "[speaker 1 then spaces"):
        assert lint(_make(name, size)) == ["Unclosed bracket at character 1: “" + _make(name, size)[:18] + "…” "
                                           "— close the tag with ]"]
    lines = lint("ok\n" * (size // 3) + "]")
    assert lines == [f"Stray ] at line {size // 3 + 1} with no [ before it"]


# These were quadratic with small constants (a second or less at the limit): counting newlines for each
# lint problem, re-reading the turn at every speaker tag, re-stripping the growing chunk for every piece.
MILD_CASES: dict[str, tuple[Callable[[], object], object]] = {
    "stray ]": (lambda: len(lint("]" * HUGE)), HUGE),
    "unclosed <|": (lambda: len(lint("<|" * (HUGE // 2))), HUGE // 2),
    "[speaker then spaces": (lambda: lint("[speaker" + " " * HUGE + "x")[0][:33], "Unclosed bracket at character 1: "),
    "silent speaker changes": (lambda: split_text("<|speaker:0|><|speaker:1|> " * (HUGE // 27) + "Hi.", 300),
                               ["<|speaker:1|>Hi."]),
    "tag then spaces": (lambda: split_text("[a]" + " " * HUGE + "x", MAX_CHUNK_LENGTH), ["[a]", "x"]),
}


@pytest.mark.timeout(10)
@pytest.mark.parametrize("case", MILD_CASES)
def test_no_mild_quadratic_at_twenty_times_the_limit(case: str) -> None:
    run, expected = MILD_CASES[case]
    assert run() == expected


# ---- playground.ui.text handlers ----

@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", PATTERNS)
def test_text_handlers_at_the_limit(name: str) -> None:
    text = _make(name, MAX_TEXT_CHARS)
    problems = lint(text)
    page = lint_html(text)
    assert f'data-count="{len(problems)}"' in page or (not problems and 'data-count="0"' in page)
    assert page.count("<li>") == min(len(problems), MAX_LINT_SHOWN) + (len(problems) > MAX_LINT_SHOWN)
    assert f'data-chunks="{len(split_text(text, 300))}"' in preview_html(text, 300)


@pytest.mark.timeout(5)
@pytest.mark.parametrize("size", [MAX_TEXT_CHARS + 1, ABOVE])
@pytest.mark.parametrize("name", ["run of .", "[speaker then spaces", "alternating speakers"])
def test_text_handlers_refuse_text_over_the_limit(name: str, size: int) -> None:
    text = _make(name, size)
    reason = f"text has {size} characters; the limit is {MAX_TEXT_CHARS}"
    assert lint_html(text) == ('<div class="s2-lint s2-lint-warn" data-count="1"><ul>'
                               f"<li>Not checked: {reason}</li></ul></div>")
    assert preview_html(text, 300) == ('<div class="s2-preview s2-preview-refused" data-chunks="0">'
                                       f"No preview: {reason}</div>")


@pytest.mark.timeout(5)
@pytest.mark.parametrize("chunk_length", [-1, 10, MIN_CHUNK_LENGTH - 1, MAX_CHUNK_LENGTH + 1, 10**12, float("nan"),
                                          "300", None])
def test_preview_refuses_a_chunk_length_outside_the_range(chunk_length: object) -> None:
    preview = preview_html("Hello there. " * 50, chunk_length)  # type: ignore[arg-type]
    assert preview.startswith('<div class="s2-preview s2-preview-refused" data-chunks="0">No preview: chunk length')
    assert 'data-chunks="17"' in preview_html("Hello there. " * 50, MIN_CHUNK_LENGTH)  # 3 sentences a chunk


@pytest.mark.timeout(5)
def test_handlers_refuse_lone_surrogates_and_non_strings() -> None:
    bad = "Hello \ud800 there"
    assert "Not checked: text contains an invalid character (a lone surrogate at position 6)" in lint_html(bad)
    assert "No preview: text contains an invalid character (a lone surrogate at position 6)" in preview_html(bad, 300)
    assert "Not checked: text must be a string, got int" in lint_html(5)  # type: ignore[arg-type]
    assert 'data-chunks="1"' in preview_html("Hello 😀 there.", 300)


# ---- engine.tokenizer ----

@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", PATTERNS)
def test_tokenizer_round_trips_adversarial_text(tok: TextTokenizer, name: str) -> None:
    text = _make(name, MAX_TEXT_CHARS)
    ids = tok.encode(text)
    assert 0 < len(ids) <= len(text.encode("utf-8")) and tok.decode(ids) == text


# ---- engine.request: lone surrogates and sizes ----

@pytest.mark.timeout(5)
@pytest.mark.parametrize("text, position", [("\ud800", 0), ("Hello \udfff", 6), ("a\ud83d", 1),
                                             ("x" * (MAX_TEXT_CHARS - 1) + "\udc00", MAX_TEXT_CHARS - 1)])
def test_lone_surrogate_in_text_is_a_400_on_input(text: str, position: int) -> None:
    with pytest.raises(ValueError) as err:
        SynthesisRequest(text)
    message = str(err.value)
    assert message.startswith(f"text contains an invalid character (a lone surrogate at position {position})")
    assert len(message) < 200 and param_of(err.value) == "input"


@pytest.mark.timeout(5)
def test_valid_text_and_paired_surrogates_pass() -> None:
    assert SynthesisRequest("Hello 😀 \U0001F600 there.").text.endswith("there.")
    assert SynthesisRequest(_make("run of .", MAX_TEXT_CHARS)).text[-1] == "a"
    ReferenceInput("Hi 😀.", codes=((1,),) * 10)


@pytest.mark.timeout(5)
def test_lone_surrogate_in_a_reference_transcript_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"^a reference transcript contains an invalid character "
                                         r"\(a lone surrogate at position 3\)"):
        ReferenceInput("hi \ud800", codes=((1,),) * 10)
    with pytest.raises(ValueError, match=rf"^a reference transcript has {ABOVE} characters; the limit is "
                                         rf"{MAX_TEXT_CHARS}$"):
        ReferenceInput("a" * ABOVE, codes=((1,),) * 10)


@pytest.mark.timeout(5)
@pytest.mark.parametrize("name", ["run of .", "[speaker then spaces", "alternating speakers"])
def test_text_over_the_limit_is_rejected_without_echoing_it(name: str) -> None:
    with pytest.raises(ValueError) as err:
        SynthesisRequest(_make(name, ABOVE))
    assert str(err.value) == f"text has {ABOVE} characters; the limit is {MAX_TEXT_CHARS}"
    with pytest.raises(ValueError, match=r"^text must be a string, got bytes$"):
        SynthesisRequest(b"Hello")  # type: ignore[arg-type]
