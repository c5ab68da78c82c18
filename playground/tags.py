"""The tag palette catalogue (what the playground offers to insert) and the tag linter.

S2 Pro reads emotion and prosody tags as plain text in square brackets (`[whisper]`, `[laughing]`,
free-form, see S2PRO_SPEC §7) and switches speakers with `<|speaker:N|>`. Nothing parses the tags, so a
typo is not an error anywhere: it is spoken, or silently ignored. The linter catches the mistakes that
cost a take: unclosed brackets, the old `(excited)` paren style of earlier Fish models, malformed speaker
tags, control tokens typed as text, and tagging so dense that the model stops following it.
"""
from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Tag:
    insert: str  # the exact text put into the box
    hint: str  # tooltip: what the tag does


@dataclass(frozen=True)
class TagGroup:
    name: str
    tags: tuple[Tag, ...]


def _group(name: str, *pairs: tuple[str, str]) -> TagGroup:
    return TagGroup(name, tuple(Tag(insert, hint) for insert, hint in pairs))


PALETTE: tuple[TagGroup, ...] = (
    _group("Emotion",
           ("[excited]", "energetic, eager delivery"), ("[joyful]", "happy, smiling tone"),
           ("[sad]", "downcast, slower"), ("[angry]", "tense, forceful"), ("[surprised]", "raised, astonished"),
           ("[nervous]", "hesitant, shaky"), ("[sarcastic]", "dry, ironic"), ("[calm]", "relaxed, even"),
           ("[excited, joyful tone]", "tags combine inside one bracket")),
    _group("Sounds",
           ("[laughing]", "laughs while speaking"), ("[chuckle]", "a short laugh"), ("[sigh]", "an audible sigh"),
           ("[inhale]", "a breath in"), ("[exhale]", "a breath out"), ("[gasp]", "a sharp intake of breath"),
           ("[clears throat]", "throat clearing"), ("[sob]", "a crying sob")),
    _group("Voice & volume",
           ("[whisper]", "whispered speech"), ("[low voice]", "quiet and low"), ("[shouting]", "loud, shouted"),
           ("[volume up]", "louder from here"), ("[volume down]", "softer from here"),
           ("[emphasis]", "stress the next words"), ("[singing]", "sung rather than spoken")),
    _group("Pauses & pacing",
           ("[short pause]", "a brief break"), ("[pause]", "a clear break"), ("[long pause]", "a long break"),
           ("[slowly]", "slower delivery"), ("[quickly]", "faster delivery")),
    _group("Speakers", *((f"<|speaker:{n}|>", f"speaker {n} talks from here (speaker 0 = the reference voice)")
                         for n in range(4))),
)

# Words that marked emotions as `(word)` in Fish Speech 1.x; in S2 Pro they belong in square brackets.
_LEGACY_PAREN = frozenset({
    "angry", "sad", "excited", "surprised", "satisfied", "delighted", "scared", "worried", "upset", "nervous",
    "frustrated", "depressed", "empathetic", "embarrassed", "disgusted", "moved", "proud", "relaxed",
    "grateful", "confident", "interested", "curious", "confused", "joyful", "happy", "sarcastic", "calm",
    "whispering", "whisper", "shouting", "screaming", "laughing", "chuckling", "chuckle", "sobbing", "crying",
    "sighing", "sigh", "panting", "groaning", "gasping", "inhale", "exhale", "pause", "soft tone",
    "in a hurry tone", "crying loudly", "crowd laughing", "background laughter", "audience laughing",
})
_PALETTE_WORDS = frozenset(t.insert.strip("[]") for g in PALETTE for t in g.tags if t.insert.startswith("["))

SPEAKER_TAG = re.compile(r"<\|speaker:\d+\|>")  # the one valid speaker switch
_BRACKET_TAG = re.compile(r"\[([^\[\]\n]*)\]")
_PAREN = re.compile(r"\(([A-Za-z][A-Za-z ,'-]{0,40})\)")
_CONTROL = re.compile(r"<\|[^<>|\n]{1,40}\|>")
_UNCLOSED_CONTROL = re.compile(r"<\|(?![^<>\n]*\|>)")
# Attempts at a speaker switch: anything in <...> that mentions speaker, or [speaker 1] / [speaker:1].
# Possessive runs of whitespace: three optional ones in a row (`\s*[:#\s]?\s*`) backtrack
# quadratically on "[speaker" followed by thousands of spaces.
_SPEAKERISH = re.compile(r"<[^<>\n]{0,40}speaker[^<>\n]{0,40}>|\[\s*+speaker\s*+(?:[:#]\s*+)?\d++\s*+\]", re.I)
_WORD = re.compile(r"\w+")
DENSE_MIN_TAGS = 4  # below this many tags, density is never flagged
DENSE_WORDS_PER_TAG = 3.0  # fewer spoken words per tag than this is "very dense"
MAX_TAG_RUN = 3  # this many tags in a row (nothing spoken between) is flagged


def find_tags(text: str) -> list[str]:
    """Every bracket tag and speaker tag in order of appearance, as written."""
    found = [(m.start(), m.group(0)) for m in _BRACKET_TAG.finditer(text)]
    found += [(m.start(), m.group(0)) for m in SPEAKER_TAG.finditer(text)]
    return [tag for _, tag in sorted(found)]


def lint(text: str) -> list[str]:
    """Human-readable problems with the tags in `text`, in order of importance; empty when all is well."""
    where = _locator(text)
    return [*_bracket_problems(text, where), *_speaker_problems(text, where), *_paren_problems(text, where),
            *_empty_tag_problems(text, where), *_density_problems(text, where)]


def _locator(text: str) -> Callable[[int], str]:
    """pos → "line N" (text with newlines) or "character N"; counting newlines afresh for each of
    thousands of problems (e.g. a run of "]") would be quadratic, so they are indexed once."""
    newlines = [m.start() for m in re.finditer("\n", text)]
    if not newlines:
        return lambda pos: f"character {pos + 1}"
    return lambda pos: f"line {bisect_left(newlines, pos) + 1}"


def _snippet(text: str, pos: int, width: int = 18) -> str:
    piece = text[pos:pos + width].split("\n")[0]
    return piece + ("…" if len(text) > pos + len(piece) else "")


def _bracket_problems(text: str, where: Callable[[int], str]) -> list[str]:
    """Unclosed `[` (closed by nothing before the next `[`, line end or text end) and stray `]`."""
    problems, open_at = [], None
    for pos, ch in enumerate(text + "\n"):
        if ch in "[\n" and open_at is not None:
            problems.append(f"Unclosed bracket at {where(open_at)}: “{_snippet(text, open_at)}” "
                            "— close the tag with ]")
            open_at = None
        if ch == "[":
            open_at = pos
        elif ch == "]":
            if open_at is None:
                problems.append(f"Stray ] at {where(pos)} with no [ before it")
            open_at = None
    return problems


def _speaker_problems(text: str, where: Callable[[int], str]) -> list[str]:
    problems, flagged = [], set()
    for m in _SPEAKERISH.finditer(text):
        if not SPEAKER_TAG.fullmatch(m.group(0)):
            flagged.add(m.start())
            problems.append(f"Unknown speaker tag “{m.group(0)}” at {where(m.start())}: "
                            "write speaker switches exactly as <|speaker:N|>, e.g. <|speaker:1|>")
    for m in _UNCLOSED_CONTROL.finditer(text):
        if m.start() in flagged:  # e.g. <|speaker:1> is reported once, as a malformed speaker tag
            continue
        problems.append(f"Unclosed tag at {where(m.start())}: “{_snippet(text, m.start())}” "
                        "— speaker tags end with |>")
    for m in _CONTROL.finditer(text):
        if "speaker" not in m.group(0).lower():
            problems.append(f"“{m.group(0)}” at {where(m.start())} is a control token: the model "
                            "reads it as plain text; remove it")
    return problems


def _paren_problems(text: str, where: Callable[[int], str]) -> list[str]:
    problems = []
    for m in _PAREN.finditer(text):
        word = m.group(1).strip().lower()
        if word in _LEGACY_PAREN or word in _PALETTE_WORDS:
            problems.append(f"“{m.group(0)}” at {where(m.start())} is the old Fish Speech paren style; "
                            f"S2 Pro reads tags in square brackets: [{m.group(1).strip()}]")
    return problems


def _empty_tag_problems(text: str, where: Callable[[int], str]) -> list[str]:
    return [f"Empty tag “{m.group(0)}” at {where(m.start())}: put a word inside or remove it"
            for m in _BRACKET_TAG.finditer(text) if not m.group(1).strip()]


def _density_problems(text: str, where: Callable[[int], str]) -> list[str]:
    tags = list(_BRACKET_TAG.finditer(text))
    problems = []
    spoken = _WORD.findall(SPEAKER_TAG.sub(" ", _BRACKET_TAG.sub(" ", text)))
    if len(tags) >= DENSE_MIN_TAGS and len(spoken) < DENSE_WORDS_PER_TAG * len(tags):
        problems.append(f"Very dense tagging: {len(tags)} tags for {len(spoken)} spoken words; the model "
                        "follows a few well-placed tags better than many")
    run = 1
    for i in range(1, len(tags)):
        run = run + 1 if not text[tags[i - 1].end():tags[i].start()].strip() else 1
        if run == MAX_TAG_RUN:
            first = tags[i - MAX_TAG_RUN + 1]
            problems.append(f"{MAX_TAG_RUN} tags in a row at {where(first.start())}: combine them into "
                            "one, e.g. [excited, joyful tone]")
    return problems
