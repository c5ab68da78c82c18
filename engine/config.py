"""Model configuration parsed and validated from the checkpoint's nested `fish_qwen3_omni` config.json.

The file follows the upstream Hugging Face layout: top-level special token ids plus `text_config` (the slow
AR along time) and `audio_decoder_config` (the fast AR along codebooks). Facts the file does not carry
(the /sqrt(11) audio embedding scale, the fast AR having no q/k norm) live in the model code, not here.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

MODEL_TYPE = "fish_qwen3_omni"


def _require(section: dict[str, Any], key: str, where: str, kind: type) -> Any:
    if key not in section:
        raise ValueError(f"config.json: missing field {where}.{key}")
    value = section[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise ValueError(f"config.json: field {where}.{key} must be {kind.__name__}, got {value!r}")
    return value


@dataclass(frozen=True)
class TransformerConfig:
    """One transformer stack (the slow AR or the fast AR)."""

    dim: int
    n_layer: int
    n_head: int
    n_local_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rope_base: float
    norm_eps: float
    max_seq_len: int
    qk_norm: bool

    def __post_init__(self) -> None:
        for f in ("dim", "n_layer", "n_head", "n_local_heads", "head_dim", "intermediate_size",
                  "vocab_size", "max_seq_len"):
            if getattr(self, f) <= 0:
                raise ValueError(f"config.json: field {f} must be positive, got {getattr(self, f)}")
        if self.n_head % self.n_local_heads:
            raise ValueError(f"config.json: n_head {self.n_head} is not a multiple of "
                             f"n_local_heads {self.n_local_heads}")
        if self.head_dim % 2:
            raise ValueError(f"config.json: head_dim {self.head_dim} must be even for RoPE")
        if not (self.rope_base > 0 and self.norm_eps > 0):
            raise ValueError("config.json: rope_base and norm_eps must be positive")

    @property
    def q_size(self) -> int:
        return self.n_head * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.n_local_heads * self.head_dim

    @classmethod
    def parse(cls, section: Any, where: str, qk_norm_default: bool) -> TransformerConfig:
        if not isinstance(section, dict):
            raise ValueError(f"config.json: missing field {where} (an object)")
        ints = ("dim", "n_layer", "n_head", "n_local_heads", "head_dim", "intermediate_size",
                "vocab_size", "max_seq_len")
        values: dict[str, Any] = {k: _require(section, k, where, int) for k in ints}
        values["rope_base"] = _require(section, "rope_base", where, float)
        values["norm_eps"] = _require(section, "norm_eps", where, float)
        qk = section.get("attention_qk_norm", qk_norm_default)
        if not isinstance(qk, bool):
            raise ValueError(f"config.json: field {where}.attention_qk_norm must be bool")
        for flag in ("attention_qkv_bias", "attention_o_bias"):
            if section.get(flag, False):
                raise ValueError(f"config.json: field {where}.{flag}=true is not an S2 Pro layout")
        return cls(qk_norm=qk, **values)


@dataclass(frozen=True)
class ModelConfig:
    """The whole Dual-AR model: slow AR, fast AR and the token id layout."""

    text: TransformerConfig
    audio: TransformerConfig
    num_codebooks: int
    codebook_size: int
    eos_token_id: int
    pad_token_id: int
    audio_pad_token_id: int
    semantic_start_token_id: int
    semantic_end_token_id: int

    def __post_init__(self) -> None:
        if self.semantic_end_token_id - self.semantic_start_token_id + 1 != self.codebook_size:
            raise ValueError(
                f"config.json: semantic range {self.semantic_start_token_id}..{self.semantic_end_token_id}"
                f" does not hold audio_decoder_config.vocab_size={self.codebook_size} tokens")
        if self.semantic_end_token_id >= self.text.vocab_size:
            raise ValueError("config.json: semantic_end_token_id lies outside text_config.vocab_size")
        if self.eos_token_id >= self.text.vocab_size:
            raise ValueError("config.json: eos_token_id lies outside text_config.vocab_size")
        if self.audio.max_seq_len < self.num_codebooks + 1:
            raise ValueError("config.json: audio_decoder_config.max_seq_len < num_codebooks + 1")

    @property
    def frame_rows(self) -> int:
        """Rows of the input grid: the token row plus one row per codebook."""
        return self.num_codebooks + 1

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        if raw.get("model_type") != MODEL_TYPE:
            raise ValueError(f"config.json: field model_type must be {MODEL_TYPE!r}, "
                             f"got {raw.get('model_type')!r}")
        text = TransformerConfig.parse(raw.get("text_config"), "text_config", qk_norm_default=True)
        dec = raw.get("audio_decoder_config")
        # The fast AR never uses q/k norm, whatever the file says.
        audio = TransformerConfig.parse(dec, "audio_decoder_config", qk_norm_default=False)
        audio = TransformerConfig(**{**asdict(audio), "qk_norm": False})
        assert isinstance(dec, dict)  # parse() rejected anything else
        text_dim = dec.get("text_dim", text.dim)
        if text_dim != text.dim:
            raise ValueError(f"config.json: audio_decoder_config.text_dim {text_dim} != text_config.dim "
                             f"{text.dim} (S2 Pro has no fast-AR input projection)")
        ids = {k: _require(raw, k, "", int) for k in (
            "eos_token_id", "pad_token_id", "audio_pad_token_id", "semantic_start_token_id",
            "semantic_end_token_id")}
        return cls(text=text, audio=audio, codebook_size=audio.vocab_size,
                   num_codebooks=_require(dec, "num_codebooks", "audio_decoder_config", int), **ids)

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read config.json at {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError(f"config.json at {path} is not a JSON object")
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        """The on-disk layout (what the real checkpoint's config.json holds)."""
        def section(t: TransformerConfig) -> dict[str, Any]:
            d = {f.name: getattr(t, f.name) for f in fields(t) if f.name != "qk_norm"}
            d.update(attention_qk_norm=t.qk_norm, attention_qkv_bias=False, attention_o_bias=False,
                     tie_word_embeddings=True)
            return d
        audio = section(self.audio)
        audio.update(num_codebooks=self.num_codebooks, text_dim=self.text.dim)
        return {
            "model_type": MODEL_TYPE, "dtype": "bfloat16",
            "eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id,
            "audio_pad_token_id": self.audio_pad_token_id,
            "semantic_start_token_id": self.semantic_start_token_id,
            "semantic_end_token_id": self.semantic_end_token_id,
            "text_config": section(self.text), "audio_decoder_config": audio,
        }


def s2_pro_config() -> ModelConfig:
    """The published S2 Pro shape (what the real config.json describes)."""
    text = TransformerConfig(dim=2560, n_layer=36, n_head=32, n_local_heads=8, head_dim=128,
                             intermediate_size=9728, vocab_size=155776, rope_base=1e6, norm_eps=1e-6,
                             max_seq_len=32768, qk_norm=True)
    audio = TransformerConfig(dim=2560, n_layer=4, n_head=32, n_local_heads=8, head_dim=128,
                              intermediate_size=9728, vocab_size=4096, rope_base=1e6, norm_eps=1e-6,
                              max_seq_len=11, qk_norm=False)
    return ModelConfig(text=text, audio=audio, num_codebooks=10, codebook_size=4096,
                       eos_token_id=151645, pad_token_id=151669, audio_pad_token_id=151677,
                       semantic_start_token_id=151678, semantic_end_token_id=155773)


def tiny_config() -> ModelConfig:
    """Small dims and layers with the real vocabulary, ids and codebook layout (for tests and demo mode)."""
    real = s2_pro_config()
    text = TransformerConfig(dim=64, n_layer=2, n_head=4, n_local_heads=2, head_dim=16,
                             intermediate_size=128, vocab_size=155776, rope_base=1e6, norm_eps=1e-6,
                             max_seq_len=32768, qk_norm=True)
    audio = TransformerConfig(**{**asdict(text), "n_layer": 2, "vocab_size": 4096, "max_seq_len": 11,
                                 "qk_norm": False})
    return ModelConfig(**{**{f.name: getattr(real, f.name) for f in fields(real)},
                          "text": text, "audio": audio})
