import json

import pytest

from engine.config import ModelConfig, s2_pro_config, tiny_config

REAL_CONFIG = {
    "model_type": "fish_qwen3_omni", "dtype": "bfloat16", "architectures": ["FishQwen3OmniForCausalLM"],
    "eos_token_id": 151645, "pad_token_id": 151669, "audio_pad_token_id": 151677,
    "semantic_start_token_id": 151678, "semantic_end_token_id": 155773,
    "text_config": {"model_type": "fish_qwen3", "vocab_size": 155776, "n_layer": 36, "n_head": 32,
                    "n_local_heads": 8, "head_dim": 128, "dim": 2560, "intermediate_size": 9728,
                    "max_seq_len": 32768, "rope_base": 1000000, "norm_eps": 1e-06,
                    "tie_word_embeddings": True, "attention_qk_norm": True, "attention_qkv_bias": False,
                    "attention_o_bias": False, "dropout": 0.0},
    "audio_decoder_config": {"model_type": "fish_qwen3_audio_decoder", "vocab_size": 4096,
                             "num_codebooks": 10, "n_layer": 4, "n_head": 32, "n_local_heads": 8,
                             "head_dim": 128, "dim": 2560, "text_dim": 2560, "intermediate_size": 9728,
                             "max_seq_len": 11, "rope_base": 1000000, "norm_eps": 1e-06},
}


def test_real_config_parses_to_published_shape() -> None:
    cfg = ModelConfig.from_dict(REAL_CONFIG)
    assert cfg == s2_pro_config()
    assert cfg.text.q_size == 4096 and cfg.text.kv_size == 1024
    assert cfg.text.qk_norm is True and cfg.audio.qk_norm is False
    assert cfg.frame_rows == 11


def test_fast_ar_qk_norm_is_forced_off() -> None:
    raw = json.loads(json.dumps(REAL_CONFIG))
    raw["audio_decoder_config"]["attention_qk_norm"] = True
    assert ModelConfig.from_dict(raw).audio.qk_norm is False


@pytest.mark.parametrize("section,key", [("text_config", "n_layer"), ("text_config", "rope_base"),
                                         ("audio_decoder_config", "num_codebooks"), ("", "eos_token_id")])
def test_missing_field_is_named(section: str, key: str) -> None:
    raw = json.loads(json.dumps(REAL_CONFIG))
    (raw[section] if section else raw).pop(key)
    with pytest.raises(ValueError, match=rf"missing field {section}\.{key}"):
        ModelConfig.from_dict(raw)


def test_wrong_fields_are_named() -> None:
    raw = json.loads(json.dumps(REAL_CONFIG))
    raw["text_config"]["n_head"] = "32"
    with pytest.raises(ValueError, match=r"text_config\.n_head must be int"):
        ModelConfig.from_dict(raw)
    raw = json.loads(json.dumps(REAL_CONFIG))
    raw["model_type"] = "llama"
    with pytest.raises(ValueError, match="model_type"):
        ModelConfig.from_dict(raw)
    raw = json.loads(json.dumps(REAL_CONFIG))
    raw["semantic_end_token_id"] = 155000
    with pytest.raises(ValueError, match="semantic range"):
        ModelConfig.from_dict(raw)
    raw = json.loads(json.dumps(REAL_CONFIG))
    raw["text_config"]["n_local_heads"] = 7
    with pytest.raises(ValueError, match="n_local_heads"):
        ModelConfig.from_dict(raw)


def test_round_trip_through_disk_layout(tmp_path) -> None:
    for cfg in (s2_pro_config(), tiny_config()):
        path = tmp_path / "config.json"
        path.write_text(json.dumps(cfg.to_dict()))
        assert ModelConfig.from_file(path) == cfg
    assert tiny_config().text.vocab_size == 155776


def test_unreadable_file(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"cannot read config\.json"):
        ModelConfig.from_file(path)
