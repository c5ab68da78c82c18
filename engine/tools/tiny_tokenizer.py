"""A tiny stand-in for the S2 Pro tokenizer files, for tests and the demo checkpoint.

The real checkpoint ships Qwen3's byte-level BPE (151,643 base tokens) plus Qwen and Fish special tokens.
This writes the same three files with the same pipeline (NFC, Qwen split regex, byte-level) and every
special/semantic token at its real id, but with a BPE trained on a paragraph of embedded English: ~600
real tokens, then inert filler entries up to id 151,642 so that the added tokens land where the real ones
do. Filler strings start with a character outside the byte-level alphabet, so no text can ever produce one.
Both `tokenizers.Tokenizer.from_file` and `transformers.AutoTokenizer.from_pretrained` load the result.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

FIRST_SPECIAL_ID = 151643
NUM_SEMANTIC = 4096
MAX_MERGES = 400  # the sample text runs out of pairs a little earlier

# Qwen2/3's pre-tokenizer split (letters, digits one by one, punctuation runs, newlines, spaces).
_QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# U+2205 is not among the 256 characters the byte-level pre-tokenizer emits: fillers are unreachable.
_FILLER_PREFIX = "\u2205"

# Ids 151643.. in order, as (content, special). Qwen3 marks its tool/think tags non-special; so do we,
# so that the engine's handling of non-special added tokens in user text is exercised too.
_QWEN_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True),
    ("<|vision_end|>", True), ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
)
_FISH_TOKENS: tuple[str, ...] = (
    "<|pad|>", "<|phoneme_start|>", "<|phoneme_end|>", "<|text|>", "<|voice|>", "<|interleave|>",
    "<|audio_start|>", "<|audio_end|>", "<|audio_pad|>",
)

_SAMPLE_TEXT = """\
The quick brown fox jumps over the lazy dog. A voice is a strange instrument: it carries words, but
also breath, mood and the shape of the room it was spoken in. When we read a story aloud, we slow down
for the sad parts and hurry through the exciting ones. She said, "Hello there! How are you today?"
He laughed, then whispered that the train would leave at 7:45 in the morning, not at noon.
Speech synthesis turns text into sound. The model listens to a short reference, learns the speaker's
timbre, and then reads new sentences in that voice. Numbers like 1, 2, 3 and 2024 are read one digit
at a time by this tokenizer. Questions rise at the end; statements fall. Don't forget: it's what you
say and how you say it. We've seen that they'll need more data, and I'd rather start again tomorrow.
"""


def write_tiny_tokenizer(out_dir: Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    added = _added_tokens()
    spec = json.loads(_train_bpe().to_str())
    spec["model"]["vocab"] = _padded_vocab(spec["model"]["vocab"])
    spec["added_tokens"] = added
    _write_json(out_dir / "tokenizer.json", spec)
    _write_json(out_dir / "tokenizer_config.json", _tokenizer_config(added))
    _write_json(out_dir / "special_tokens_map.json", {
        "eos_token": "<|im_end|>", "pad_token": "<|pad|>",
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>", *_FISH_TOKENS],
    })


def _train_bpe() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=len(alphabet) + MAX_MERGES, initial_alphabet=alphabet,
                                  show_progress=False)
    tokenizer.train_from_iterator(_SAMPLE_TEXT.splitlines(), trainer=trainer)
    return tokenizer


def _padded_vocab(vocab: dict[str, int]) -> dict[str, int]:
    # The BPE model must own ids 0..151642 contiguously, or the added tokens would not get their ids.
    padded = dict(vocab)
    for token_id in range(len(vocab), FIRST_SPECIAL_ID):
        padded[f"{_FILLER_PREFIX}{token_id}"] = token_id
    return padded


def _added_tokens() -> list[dict[str, Any]]:
    entries = [*_QWEN_TOKENS, *((t, True) for t in _FISH_TOKENS),
               *((f"<|semantic:{k}|>", True) for k in range(NUM_SEMANTIC))]
    return [{"id": FIRST_SPECIAL_ID + i, "content": content, "single_word": False, "lstrip": False,
             "rstrip": False, "normalized": False, "special": special}
            for i, (content, special) in enumerate(entries)]


def _tokenizer_config(added: list[dict[str, Any]]) -> dict[str, Any]:
    decoder = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in added}
    return {
        "tokenizer_class": "Qwen2Tokenizer", "added_tokens_decoder": decoder, "bos_token": None,
        "eos_token": "<|im_end|>", "pad_token": "<|pad|>", "unk_token": None,
        "add_prefix_space": False, "clean_up_tokenization_spaces": False, "errors": "replace",
        "model_max_length": 32768, "split_special_tokens": False,
    }


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
