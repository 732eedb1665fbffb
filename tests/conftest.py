"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _models import tiny_model

import segscope

#: The development copy of CamVid beside the repo (absent on a user's machine).
CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "camvid"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tests use tiny models: one thread avoids the sync cost of a busy second core."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def camvid_root() -> Path:
    if not (CAMVID / "val.txt").is_file():
        pytest.skip(f"CamVid development copy not found at {CAMVID}")
    return CAMVID


@pytest.fixture
def tiny_segnet() -> segscope.SegNet:
    """A small SegNet (width 1/16) with non-trivial BN statistics, in eval mode."""
    return tiny_model()
