"""Shared fixtures: a tiny random checkpoint in the real on-disk format, loaded once per session."""
from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
from pathlib import Path

import pytest
import soundfile as sf
import torch

# Without a GPU the Triton kernels run (and are tested) through Triton's interpreter on CPU tensors; it
# is chosen when a kernel is defined, so before anything imports engine.kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from engine.audio import DecodedClip
from engine.loader import LoadedModel, load_model_dir
from engine.prompt import build_prompt
from engine.reference import DenseKVCache
from engine.tokenizer import TextTokenizer
from engine.tools.tiny_checkpoint import write_tiny_checkpoint
from engine.tools.tiny_tokenizer import write_tiny_tokenizer
from playground.store import Store
from tests.store_helpers import to_44k
from tests.tools import tool

# Tiny models are fastest single-threaded, and 2 cores shared with servers under test oversubscribe.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny tokenizer files alone (read-only: tests that edit them work on copies)."""
    out_dir = tmp_path_factory.mktemp("tiny_tokenizer")
    write_tiny_tokenizer(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tok(tokenizer_dir: Path) -> TextTokenizer:
    return TextTokenizer(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"), seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir: Path) -> LoadedModel:
    return load_model_dir(tiny_dir, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def talkative_model(tiny_model: LoadedModel) -> LoadedModel:
    """The tiny checkpoint with its <|im_end|> embedding turned towards typical hidden states, so that
    end of speech comes after a handful of frames and long text really runs chunk after chunk (random
    weights alone almost never stop)."""
    model = copy.deepcopy(tiny_model.model)
    prompt = build_prompt(tiny_model.tokenizer, "Hello there, this is a test of the thing.")
    t = model.cfg.text
    cache = DenseKVCache.empty(t.n_layer, prompt.shape[1], t.n_local_heads, t.head_dim, torch.float32,
                               torch.device("cpu"))
    with torch.no_grad():
        mean = model.slow_forward(model.embed(prompt), torch.arange(prompt.shape[1]), cache.attend).mean(0)
        model.text_model.model.embeddings.weight[model.cfg.eos_token_id] = mean * 12.0 / (mean @ mean)
    return dataclasses.replace(tiny_model, model=model)


# -- the store's tests (test_store*.py) --------------------------------------------------------------
@pytest.fixture(scope="session")
def spoken_clip(tmp_path_factory: pytest.TempPathFactory) -> DecodedClip:
    """Real speech: espeak-ng writes 16-bit mono WAV at 22.05 kHz."""
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run([tool("espeak-ng"), "-w", str(path), "Hello, this is the voice I would like to keep in my "
                    "library, so that later takes sound just like me."], check=True, timeout=60)
    assert sf.info(path).subtype == "PCM_16"
    native, rate = sf.read(path, dtype="float32")
    return DecodedClip(to_44k(native, rate), native, rate)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path)
