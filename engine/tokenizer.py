"""The checkpoint's text tokenizer and the control-token ids, read from its own files.

Safety rule for user text: `TextTokenizer.encode` turns every added-token string in the text into plain
characters (byte-level BPE pieces), so typing `<|im_end|>` or `<|semantic:5|>` cannot close a turn or
fake audio. The only exception is `<|speaker:N|>`: if the checkpoint defines it as an added token it keeps
that id (that is how upstream tokenizes it); otherwise it is plain text anyway. Control tokens enter a
prompt only by id, through `SpecialIds`, in `engine.prompt`. For text without added-token strings the ids
equal upstream's `encode(text, add_special_tokens=False)` exactly.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

SPEAKER_TAG = re.compile(r"<\|speaker:(\d+)\|>")

# SpecialIds field -> token string in tokenizer.json (spec §7; the semantic range is read separately).
_TOKENS: dict[str, str] = {
    "endoftext": "<|endoftext|>", "im_start": "<|im_start|>", "im_end": "<|im_end|>", "pad": "<|pad|>",
    "phoneme_start": "<|phoneme_start|>", "phoneme_end": "<|phoneme_end|>", "text": "<|text|>",
    "voice": "<|voice|>", "interleave": "<|interleave|>", "audio_start": "<|audio_start|>",
    "audio_end": "<|audio_end|>", "audio_pad": "<|audio_pad|>",
}
# config.json key -> SpecialIds field it must equal.
_CONFIG_KEYS: dict[str, str] = {
    "eos_token_id": "im_end", "pad_token_id": "pad", "audio_pad_token_id": "audio_pad",
    "semantic_start_token_id": "semantic_start", "semantic_end_token_id": "semantic_end",
}


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the control tokens and of the semantic range `<|semantic:k|>` = semantic_start + k."""

    endoftext: int
    im_start: int
    im_end: int
    pad: int
    phoneme_start: int
    phoneme_end: int
    text: int
    voice: int
    interleave: int
    audio_start: int
    audio_end: int
    audio_pad: int
    semantic_start: int
    semantic_end: int

    @property
    def num_semantic(self) -> int:
        return self.semantic_end - self.semantic_start + 1

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> SpecialIds:
        ids = {name: _require_id(tokenizer, token) for name, token in _TOKENS.items()}
        start = _require_id(tokenizer, "<|semantic:0|>")
        count = 0
        while (token_id := tokenizer.token_to_id(f"<|semantic:{count}|>")) is not None:
            # Codes map to ids by addition (spec §3), so a gap would silently shift every code after it.
            if token_id != start + count:
                raise ValueError(f"tokenizer.json: <|semantic:{count}|> has id {token_id}, expected "
                                 f"{start + count}; semantic tokens must have contiguous ids")
            count += 1
        return cls(**ids, semantic_start=start, semantic_end=start + count - 1)

    def check_against(self, config_ids: Mapping[str, int]) -> None:
        """Raise ValueError naming every config.json id that is missing or disagrees with the tokenizer."""
        problems = []
        for key, name in _CONFIG_KEYS.items():
            ours = getattr(self, name)
            if key not in config_ids:
                problems.append(f"{key} is missing (tokenizer says {ours})")
            elif config_ids[key] != ours:
                problems.append(f"{key} is {config_ids[key]} but the tokenizer's {name} id is {ours}")
        if problems:
            raise ValueError("config.json and tokenizer.json disagree: " + "; ".join(problems))


class TextTokenizer:
    """Byte-level BPE from `<model_dir>/tokenizer.json`; user text never yields control tokens."""

    def __init__(self, model_dir: str | Path) -> None:
        path = Path(model_dir) / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the checkpoint directory must hold tokenizer.json")
        spec = json.loads(path.read_text(encoding="utf-8"))
        self._tokenizer = Tokenizer.from_str(json.dumps(_literal_added_tokens(spec)))
        # With every non-speaker added token flagged special, this makes them all encode as plain text.
        self._tokenizer.encode_special_tokens = True
        self.special = SpecialIds.from_tokenizer(self._tokenizer)

    def encode(self, text: str) -> list[int]:
        """Token ids of text, no special tokens added; added-token strings in it stay plain text."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=False)


def _literal_added_tokens(spec: dict[str, Any]) -> dict[str, Any]:
    # `encode_special_tokens` only bypasses tokens flagged special, and Qwen3 ships some added tokens
    # (<think>, <tool_call>, ...) unflagged; flag all of them except speaker tags, which must still match.
    spec = dict(spec)
    spec["added_tokens"] = [{**token, "special": SPEAKER_TAG.fullmatch(token["content"]) is None}
                            for token in spec.get("added_tokens", [])]
    return spec


def _require_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"tokenizer.json has no token {token}; is this an S2 Pro checkpoint?")
    return token_id

