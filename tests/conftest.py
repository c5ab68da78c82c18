"""Shared fixtures: a tiny random checkpoint in the real on-disk format, loaded once per session."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.loader import LoadedModel, load_model_dir
from engine.tools.tiny_checkpoint import write_tiny_checkpoint

# Tiny models are fastest single-threaded, and 2 cores shared with servers under test oversubscribe.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"), seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_dir: Path) -> LoadedModel:
    return load_model_dir(tiny_dir, torch.device("cpu"), torch.float32)
