"""Tokenizer wrapper and the tiny tokenizer files: real S2 Pro ids, safe user text, config cross-check."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from engine.tokenizer import SpecialIds, TextTokenizer
from engine.tools.tiny_tokenizer import write_tiny_tokenizer

REAL_IDS = SpecialIds(endoftext=151643, im_start=151644, im_end=151645, pad=151669, phoneme_start=151670,
                      phoneme_end=151671, text=151672, voice=151673, interleave=151674, audio_start=151675,
                      audio_end=151676, audio_pad=151677, semantic_start=151678, semantic_end=155773)
REAL_CONFIG_IDS = {"eos_token_id": 151645, "pad_token_id": 151669, "audio_pad_token_id": 151677,
                   "semantic_start_token_id": 151678, "semantic_end_token_id": 155773}
TOKEN_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|pad|>": 151669,
             "<|phoneme_start|>": 151670, "<|phoneme_end|>": 151671, "<|text|>": 151672, "<|voice|>": 151673,
             "<|interleave|>": 151674, "<|audio_start|>": 151675, "<|audio_end|>": 151676,
             "<|audio_pad|>": 151677, "<|semantic:0|>": 151678, "<|semantic:1|>": 151679,
             "<|semantic:4095|>": 155773}
PLAIN_TEXTS = [
    "Hello world, this is a test!",
    "  multiple   spaces\n\nand 12345 numbers... don't we've I'll",
    "Die Universität Karlsruhe ist wunderschön, oder?",
    "今天天气很好。我们去公园吧！",
    "[whisper] quietly now [laughing] ha 🎉 tabs\tand\r\nCRLF",
    "<|speaker:0|>Hi there. <|speaker:1|>Hello.",
]


@pytest.fixture(scope="module")
def raw(tokenizer_dir: Path) -> Tokenizer:
    """The files as any `tokenizers` user loads them (special tokens matched in text)."""
    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))


def _edited_copy(src: Path, dst: Path, edit) -> Path:
    """A copy of the tokenizer dir whose tokenizer.json went through edit(spec) -> spec."""
    dst.mkdir()
    spec = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    (dst / "tokenizer.json").write_text(json.dumps(edit(spec)), encoding="utf-8")
    return dst


def test_writer_is_fast_small_and_complete(tmp_path: Path) -> None:
    start = time.perf_counter()
    write_tiny_tokenizer(tmp_path)
    assert time.perf_counter() - start < 2.0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) < 5_000_000
    raw = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert raw.get_vocab_size() == 155_774  # 151,643 base ids + 4,131 added tokens
    assert raw.get_vocab_size(with_added_tokens=False) == 151_643


def test_special_ids_equal_real_ids(tok: TextTokenizer) -> None:
    assert tok.special == REAL_IDS
    assert tok.special.num_semantic == 4096


def test_ids_round_trip_through_both_loaders(tokenizer_dir: Path, raw: Tokenizer) -> None:
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tokenizer_dir)
    for token, token_id in TOKEN_IDS.items():
        assert raw.token_to_id(token) == token_id
        assert raw.id_to_token(token_id) == token
        assert hf.convert_tokens_to_ids(token) == token_id
        assert hf.convert_ids_to_tokens(token_id) == token
    assert (hf.eos_token_id, hf.pad_token_id) == (151645, 151669)
    for text in PLAIN_TEXTS:
        ids = raw.encode(text, add_special_tokens=False).ids
        assert hf.encode(text, add_special_tokens=False) == ids
        assert max(ids) < 151643
        assert raw.decode(ids) == text


def test_plain_text_matches_raw_tokenizer_below_specials(tok: TextTokenizer, raw: Tokenizer) -> None:
    for text in PLAIN_TEXTS:
        ids = tok.encode(text)
        assert ids == raw.encode(text, add_special_tokens=False).ids
        assert max(ids) < 151643
        assert tok.decode(ids) == text
    # Single bytes keep GPT-2/Qwen byte-level ids.
    assert tok.encode("\n") == [198]
    assert tok.encode("!") == [0]


def test_control_strings_in_user_text_stay_literal(tok: TextTokenizer, raw: Tokenizer) -> None:
    text = "a<|im_end|>b<|semantic:5|>c<think>d<|voice|>"
    assert {151645, 151683, 151667, 151673} <= set(raw.encode(text, add_special_tokens=False).ids)
    ids = tok.encode(text)
    assert max(ids) < 151643
    assert tok.decode(ids) == text


def test_speaker_tag_defined_as_added_token_keeps_its_id(tokenizer_dir: Path, tmp_path: Path) -> None:
    def add_speaker(spec: dict) -> dict:
        spec["added_tokens"].append({"id": 155774, "content": "<|speaker:0|>", "single_word": False,
                                     "lstrip": False, "rstrip": False, "normalized": False, "special": True})
        return spec

    tok = TextTokenizer(_edited_copy(tokenizer_dir, tmp_path / "tok", add_speaker))
    ids = tok.encode("<|speaker:0|>Hi<|im_end|>")
    assert ids[0] == 155774
    assert max(ids[1:]) < 151643
    assert tok.decode(ids) == "<|speaker:0|>Hi<|im_end|>"


def test_check_against_accepts_real_config_and_names_wrong_ids() -> None:
    REAL_IDS.check_against(REAL_CONFIG_IDS)
    with pytest.raises(ValueError, match=r"pad_token_id is 151670 but the tokenizer's pad id is 151669"):
        REAL_IDS.check_against({**REAL_CONFIG_IDS, "pad_token_id": 151670})
    with pytest.raises(ValueError, match=r"eos_token_id.*semantic_end_token_id"):
        REAL_IDS.check_against({**REAL_CONFIG_IDS, "eos_token_id": 151643, "semantic_end_token_id": 1})
    missing = {k: v for k, v in REAL_CONFIG_IDS.items() if k != "audio_pad_token_id"}
    with pytest.raises(ValueError, match="audio_pad_token_id is missing"):
        REAL_IDS.check_against(missing)


def test_missing_control_token_is_named(tokenizer_dir: Path, tmp_path: Path) -> None:
    def drop_voice(spec: dict) -> dict:
        spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != "<|voice|>"]
        return spec

    with pytest.raises(ValueError, match=r"no token <\|voice\|>"):
        TextTokenizer(_edited_copy(tokenizer_dir, tmp_path / "tok", drop_voice))


def test_short_semantic_range_is_caught_by_config_check(tokenizer_dir: Path, tmp_path: Path) -> None:
    def rename_last(spec: dict) -> dict:
        for token in spec["added_tokens"]:
            if token["content"] == "<|semantic:4095|>":
                token["content"] = "<|unused|>"
        return spec

    tok = TextTokenizer(_edited_copy(tokenizer_dir, tmp_path / "tok", rename_last))
    assert (tok.special.semantic_end, tok.special.num_semantic) == (155772, 4095)
    with pytest.raises(ValueError, match="semantic_end_token_id is 155773"):
        tok.special.check_against(REAL_CONFIG_IDS)


def test_missing_tokenizer_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        TextTokenizer(tmp_path)
