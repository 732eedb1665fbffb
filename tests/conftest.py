"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
    torch.manual_seed(0)
    model = segscope.SegNet(num_classes=3, width=0.0625)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
            elif isinstance(m, torch.nn.Conv2d):
                m.bias.uniform_(-0.05, 0.05)
    return model.eval()
