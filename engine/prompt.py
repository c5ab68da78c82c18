"""Prompt building (text + voice references + history → the model's input grid) and long-text chunking.

Grid (spec §3): a LongTensor [11, T]; row 0 = token ids; rows 1..10 = codes c0..c9 at audio positions,
where row 0 = semantic_start + c0; rows 1..10 are 0 at text positions.

Layout (spec §7), one line per message; `{...}` is one separate tokenize call, `<|x|>` an id inserted
directly (user text cannot produce control ids, see engine.tokenizer):
    <|im_start|>{system\n}{SYSTEM_PLAIN}<|im_end|>{\n}
 or <|im_start|>{system\n}{SYSTEM_CLONE}{transcripts}{SPEECH_HEADER}[reference codes]<|im_end|>{\n}
    per history item:  <|im_start|>{user\n}{chunk text}<|im_end|>{\n}
                       <|im_start|>{assistant\n}<|voice|>[chunk codes]<|im_end|>{\n}
    <|im_start|>{user\n}{text}<|im_end|>{\n}
    <|im_start|>{assistant\n}<|voice|>                       ← generation starts here
Upstream tokenizes "<|im_start|>user\n" as one string, but the tokenizer cuts added tokens out before
BPE, so [im_start] + encode("user\n") is the identical id sequence.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.params import RequestError
from engine.tokenizer import SPEAKER_TAG, SpecialIds, TextTokenizer

NUM_CODEBOOKS = 10
NUM_ROWS = NUM_CODEBOOKS + 1
# Every codebook's embedding stride is 4096 (spec §3); residual codebooks only hold 1024 entries, but
# the codec clamps c1..c9 itself, so we accept the embedding range rather than reject sampled codes.
CODE_LIMIT = 4096
PROMPT_LIMIT = 30_720
MIN_CHUNK_CHARS = 32  # room for a carried speaker tag plus some text
MAX_SPEAKER_DIGITS = 6  # so a carried <|speaker:N|> (at most 18 characters) leaves room in every chunk
MAX_TURNS_PER_CHUNK = 5  # upstream groups at most 5 speaker turns into one user message (spec §7)

SYSTEM_PLAIN = "convert the provided text to speech"
SYSTEM_CLONE = "convert the provided text to speech reference to the following:\n\nText:\n"
SPEECH_HEADER = "\n\nSpeech:\n"


@dataclass(frozen=True, eq=False)  # field-wise == on tensors has no single truth value
class Reference:
    """A voice reference: its transcript (may be empty or hold its own `<|speaker:N|>`) and codes [10, N]."""

    text: str
    codes: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise RequestError("references", f"reference text must be a string, got {type(self.text).__name__}")
        check_codes(self.codes, "reference codes")


def check_codes(codes: Tensor, what: str) -> None:
    """Raise RequestError("references") unless codes is a LongTensor [10, N ≥ 1] with every value in 0..4095."""
    if not isinstance(codes, Tensor):
        raise RequestError("references", f"{what} must be a torch tensor, got {type(codes).__name__}")
    if codes.dtype != torch.long or codes.dim() != 2 or codes.shape[0] != NUM_CODEBOOKS or codes.shape[1] < 1:
        raise RequestError("references", f"{what} must be a torch.long tensor of shape [{NUM_CODEBOOKS}, N ≥ 1], "
                         f"got {tuple(codes.shape)} {codes.dtype}")
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= CODE_LIMIT:
        raise RequestError("references", f"{what} must lie in 0..{CODE_LIMIT - 1}, got values {low}..{high}")


def audio_columns(special: SpecialIds, codes: Tensor) -> Tensor:
    """Codes [10, n] → grid columns [11, n]: row 0 = semantic_start + c0, rows 1..10 = c0..c9.

    Also the slow AR's decode-time input for a new frame. No range check, hence no host sync: callers
    validate untrusted codes with `check_codes`. Stays on the codes' device.
    """
    return torch.cat([codes[:1] + special.semantic_start, codes], dim=0)


def build_prompt(tok: TextTokenizer, text: str, references: Sequence[Reference] = (),
                 history: Sequence[tuple[str, Tensor]] = (), prompt_limit: int = PROMPT_LIMIT) -> Tensor:
    """The input grid [11, T] (CPU, long) for synthesizing `text`; layout in the module docstring.

    `history` holds already-synthesized chunks of the same long text as (chunk text, codes [10, n]).
    """
    if not text.strip():
        raise RequestError("text", "text is empty: nothing to synthesize")
    special = tok.special
    parts = _message(tok, "system", _system_parts(tok, references))
    for i, (chunk_text, codes) in enumerate(history):
        check_codes(codes, f"history[{i}] codes")
        parts += _message(tok, "user", [_text(tok, dialogue_text(chunk_text))])
        parts += _message(tok, "assistant", [_ids([special.voice]), audio_columns(special, codes.cpu())])
    parts += _message(tok, "user", [_text(tok, dialogue_text(text))])
    parts += [_ids([special.im_start]), _text(tok, "assistant\n"), _ids([special.voice])]
    grid = torch.cat(parts, dim=1)
    if grid.shape[1] > prompt_limit:
        raise RequestError("text", f"prompt is {grid.shape[1]} tokens, over the limit of {prompt_limit}: use shorter "
                         "or fewer reference clips, shorter text, or less history")
    return grid


def _system_parts(tok: TextTokenizer, references: Sequence[Reference]) -> list[Tensor]:
    if not references:
        return [_text(tok, SYSTEM_PLAIN)]
    transcripts = "\n".join(ref.text if SPEAKER_TAG.search(ref.text) else f"<|speaker:{i}|>{ref.text}"
                            for i, ref in enumerate(references))
    codes = torch.cat([ref.codes.cpu() for ref in references], dim=1)  # one span, no separator
    return [_text(tok, SYSTEM_CLONE), _text(tok, transcripts), _text(tok, SPEECH_HEADER),
            audio_columns(tok.special, codes)]


def _message(tok: TextTokenizer, role: str, parts: list[Tensor]) -> list[Tensor]:
    special = tok.special
    return [_ids([special.im_start]), _text(tok, f"{role}\n"), *parts,
            _ids([special.im_end]), _text(tok, "\n")]


def _text(tok: TextTokenizer, text: str) -> Tensor:
    """One separate tokenize call → text columns [11, n]."""
    return _ids(tok.encode(text))


def _ids(ids: list[int]) -> Tensor:
    grid = torch.zeros(NUM_ROWS, len(ids), dtype=torch.long)
    grid[0] = torch.tensor(ids, dtype=torch.long)
    return grid


# ---- long-text chunking ----

# Group 1 is the tag; the whitespace after it joins it to the text it introduces.
_TAG = re.compile(r"(<\|speaker:\d+\|>|\[[^\[\]\n]*\])\s*")
_CLOSERS = "\"'”’)」』»"
# Cut levels, coarsest first; a cut goes right after a match (so trailing spaces stay with the piece).
_LEVELS: tuple[re.Pattern[str], ...] = (
    # sentence ends: Latin terminators only before whitespace (keeps "3.14" whole), CJK ones
    # anywhere (no spaces in CJK), any newline; closing quotes/brackets stay with their sentence.
    # Linear time: a run of terminators is tried only from its start (the lookbehind) and never given
    # back (possessive), else "....a" backtracks quadratically; giving back could not make a match anyway.
    re.compile(rf"(?:(?<![.!?…])[.!?…]++[{_CLOSERS}]*+(?=\s|$)|[。！？]+[{_CLOSERS}]*|\n)\s*"),
    re.compile(r"[,;:，；：、]\s*"),  # clause ends
    re.compile(r"\s+"),  # word ends
    re.compile(r".", re.DOTALL),  # anywhere: a run of letters with no space (CJK, URLs)
)


def split_text(text: str, max_chars: int) -> list[str]:
    """Split text into chunks of at most max_chars characters, in order: the user-turn texts the model gets.

    Rules:
    - Untagged text: sentences are packed greedily; a cut prefers sentence ends (. ! ? … then whitespace;
      。！？ anywhere; newlines), then clause ends (, ; : ，；：、), then spaces, then any character. The
      finer levels only apply inside a piece longer than the budget.
    - Dialogue (text with `<|speaker:N|>` tags, spec §7): the text becomes turns as `dialogue_turns` makes
      them, and chunks are whole turns joined by "\n", at most MAX_TURNS_PER_CHUNK turns each. A turn
      longer than max_chars is split as untagged text and its speaker tag starts every piece (counted in
      max_chars); turns with nothing to say are dropped.
    - Never cuts inside `<|speaker:N|>` or `[tag]`, nor (unless no other cut fits) between a tag and
      the text after it, which the tag introduces. Only a single tag longer than max_chars can make a
      chunk exceed max_chars. Empty text gives no chunks.
    - Runs in time linear in len(text); raises ValueError (message starting "text") for a speaker number
      of more than MAX_SPEAKER_DIGITS digits, whose tag could not be carried into chunks.
    """
    if max_chars < MIN_CHUNK_CHARS:
        raise ValueError(f"max_chars must be at least {MIN_CHUNK_CHARS}, got {max_chars}")
    if SPEAKER_TAG.search(text) is None:
        return _turn_pieces("", text, max_chars)
    pieces = [piece for tag, body in _tagged_turns(text) for piece in _turn_pieces(tag, body, max_chars)]
    return _group_turns(pieces, max_chars)


def dialogue_text(text: str) -> str:
    """The user-turn text of `text` as upstream builds it (spec §7): dialogue turns joined by "\n".

    Text without speaker tags is returned unchanged. Idempotent, so chunks of split_text pass through.
    """
    if SPEAKER_TAG.search(text) is None:
        return text
    return "\n".join(tag + body for tag, body in _tagged_turns(text))


def _tagged_turns(text: str) -> list[tuple[str, str]]:
    """Cut text before each speaker tag into (tag, stripped body); text before the first tag is a turn
    with tag "" (upstream drops it, a defect). Each slice is read once, so this stays linear."""
    turns: list[tuple[str, str]] = []
    matches = list(SPEAKER_TAG.finditer(text))
    lead = text[:matches[0].start()].strip() if matches else text.strip()
    if lead:
        turns.append(("", lead))
    for i, match in enumerate(matches):
        _speaker_number(match)
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        turns.append((match.group(0), text[match.end():end].strip()))
    return turns


def _turn_pieces(tag: str, body: str, max_chars: int) -> list[str]:
    """One turn as chunks of ≤ max_chars, each starting with the turn's speaker tag."""
    return [tag + chunk for chunk in map(str.strip, _pack(body, max_chars - len(tag))) if chunk]


def _group_turns(turns: list[str], max_chars: int) -> list[str]:
    """Greedily join whole turns with "\n" into chunks of ≤ max_chars characters and ≤ MAX_TURNS_PER_CHUNK
    turns, as upstream groups them (it counts UTF-8 bytes; our chunk_length is in characters)."""
    chunks: list[list[str]] = []
    size = 0  # characters of the open chunk, newlines included
    for turn in turns:
        if chunks and len(chunks[-1]) < MAX_TURNS_PER_CHUNK and size + 1 + len(turn) <= max_chars:
            chunks[-1].append(turn)
            size += 1 + len(turn)
        else:
            chunks.append([turn])
            size = len(turn)
    return ["\n".join(chunk) for chunk in chunks]


def _speaker_number(match: re.Match[str]) -> int:
    digits = match.group(1)
    # The tag is carried into every chunk of its turn, so it must stay short; int() of thousands of
    # digits is also slow (and refused past 4,300 digits).
    if len(digits) > MAX_SPEAKER_DIGITS:
        raise RequestError("text", f"text has a speaker tag with a {len(digits)}-digit number at character "
                         f"{match.start() + 1}; speaker numbers have at most {MAX_SPEAKER_DIGITS} digits")
    return int(digits)


def _pack(text: str, budget: int, level: int = 0) -> list[str]:
    """Greedily join this level's pieces into chunks whose trimmed length is ≤ budget.

    Oversize pieces are packed one level finer, and their last part stays open for what follows.
    Chunks keep their whitespace, so they concatenate back to text exactly; the caller trims them.
    The open chunk is a list of pieces measured by `_grow`, never re-joined or re-stripped per piece,
    which would be quadratic (a tag followed by thousands of spaces is one growing chunk).
    """
    chunks, current, size = [], [], (0, 0)
    for piece in _cut(text, level):
        grown = _grow(size, piece)
        if grown[0] <= budget:
            current.append(piece)
            size = grown
            continue
        chunks.append("".join(current))
        if len(piece.strip()) <= budget or level + 1 == len(_LEVELS):
            current = [piece]
        else:
            *done, last = _pack(piece, budget, level + 1)
            chunks.extend(done)
            current = [last]
        size = _grow((0, 0), current[0])
    chunks.append("".join(current))
    return chunks


def _grow(size: tuple[int, int], piece: str) -> tuple[int, int]:
    """Size of chunk + piece from the chunk's size: (trimmed length, whitespace after its last non-space)."""
    trimmed, trailing = size
    body = piece.strip()
    if not body:
        return trimmed, trailing + len(piece)
    leading = len(piece) - len(piece.lstrip())
    before = trimmed + trailing + leading if trimmed else 0
    return before + len(body), len(piece) - leading - len(body)


def _cut(text: str, level: int) -> list[str]:
    last_resort = level == len(_LEVELS) - 1
    blocked = set()
    for tag in _TAG.finditer(text):
        # Never inside a tag; between a tag and its text only as a last resort ([a][b][c]... runs):
        # a [whisper] at the end of one chunk would not affect the next.
        blocked.update(range(tag.start() + 1, tag.end(1) if last_resort else tag.end() + 1))
    points = {match.end() for match in _LEVELS[level].finditer(text)}
    points = sorted(p for p in points if 0 < p < len(text) and p not in blocked)
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]

