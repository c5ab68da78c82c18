"""Strict loading of the real on-disk layout, exercised on tiny checkpoints."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.checkpoint import CheckpointError, load_dual_ar, resolve_model_path, weight_files
from engine.loader import load_model_dir
from engine.tools.tiny_checkpoint import write_tiny_checkpoint


@pytest.fixture
def ckpt(tiny_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, out)
    return out


def edit_shard(path: Path, fn) -> None:
    shard = weight_files(path)[0]
    state = load_file(str(shard))
    fn(state)
    save_file(state, str(shard), metadata={"format": "pt"})


def test_layout_matches_the_real_file_set(tiny_dir: Path) -> None:
    names = {p.name for p in tiny_dir.iterdir()}
    assert {"config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
            "model.safetensors.index.json", "codec.pth", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json"} <= names
    index = json.loads((tiny_dir / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"model-00001-of-00002.safetensors",
                                                 "model-00002-of-00002.safetensors"}
    state = {}
    for f in weight_files(tiny_dir):
        state.update(load_file(str(f)))
    assert set(state) == set(index["weight_map"])
    assert all(t.dtype == torch.bfloat16 for t in state.values())
    assert state["text_model.model.embeddings.weight"].shape[0] == 155776
    assert state["audio_decoder.codebook_embeddings.weight"].shape[0] == 40960


def test_missing_key_is_named(ckpt: Path) -> None:
    edit_shard(ckpt, lambda s: s.pop(sorted(s)[0]))
    first = sorted(load_file(str(weight_files(ckpt)[1])))  # untouched shard still loads
    assert first
    with pytest.raises(CheckpointError, match=r"missing keys: .*"):
        load_dual_ar(ckpt, "cpu", torch.float32)


def test_unexpected_key_is_named(ckpt: Path) -> None:
    edit_shard(ckpt, lambda s: s.__setitem__("text_model.lm_head.weight", torch.zeros(2, 2)))
    with pytest.raises(CheckpointError, match=r"unexpected keys: text_model\.lm_head\.weight"):
        load_dual_ar(ckpt, "cpu", torch.float32)


def test_wrong_shape_is_named(ckpt: Path) -> None:
    key = "audio_decoder.output.weight"
    shard = next(f for f in weight_files(ckpt) if key in load_file(str(f)))
    state = load_file(str(shard))
    state[key] = torch.zeros(4095, state[key].shape[1], dtype=torch.bfloat16)
    save_file(state, str(shard), metadata={"format": "pt"})
    expected = r"audio_decoder\.output\.weight \(expected \(4096, 64\), got \(4095, 64\)\)"
    with pytest.raises(CheckpointError, match=expected):
        load_dual_ar(ckpt, "cpu", torch.float32)


def test_single_file_checkpoint_loads_identically(ckpt: Path, tiny_model) -> None:
    state = {}
    for f in weight_files(ckpt):
        state.update(load_file(str(f)))
        f.unlink()
    (ckpt / "model.safetensors.index.json").unlink()
    save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    model = load_dual_ar(ckpt, "cpu", torch.float32)
    for k, v in model.state_dict().items():
        assert torch.equal(v, tiny_model.model.state_dict()[k]), k


def test_incomplete_directory_and_bad_path(tmp_path: Path, ckpt: Path) -> None:
    (ckpt / "codec.pth").unlink()
    with pytest.raises(CheckpointError, match=r"missing codec\.pth"):
        resolve_model_path(ckpt)
    with pytest.raises(CheckpointError, match="not a directory"):
        resolve_model_path(tmp_path / "nope")


def test_tokenizer_ids_are_checked_against_config(ckpt: Path) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["pad_token_id"] = 151670
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="pad_token_id"):
        load_model_dir(ckpt, torch.device("cpu"), torch.float32)


def test_seed_changes_weights_and_is_reproducible(tmp_path: Path, tiny_dir: Path) -> None:
    again = write_tiny_checkpoint(tmp_path / "again", seed=0)
    other = write_tiny_checkpoint(tmp_path / "other", seed=1)
    name = "model-00001-of-00002.safetensors"
    assert (again / name).read_bytes() == (tiny_dir / name).read_bytes()
    assert (other / name).read_bytes() != (tiny_dir / name).read_bytes()


@pytest.mark.slow
def test_full_size_codec_loads_through_the_real_path(tmp_path: Path) -> None:
    """--full-codec writes a random codec at the real dimensions (no codec_config.json)."""
    out = write_tiny_checkpoint(tmp_path / "full", seed=0, full_codec=True)
    assert not (out / "codec_config.json").exists()
    assert (out / "codec.pth").stat().st_size > 1_500_000_000
    loaded = load_model_dir(out, torch.device("cpu"), torch.float32)
    assert loaded.codec.config.latent_dim == 1024 and loaded.hop_length == 2048
    pcm = loaded.codec.decode(torch.zeros(1, 10, 2, dtype=torch.long))
    assert pcm.shape == (1, 1, 4096)
