"""The small model the tests explain: one definition for fixtures and helpers."""

from __future__ import annotations

import torch

import segscope


def tiny_model() -> segscope.SegNet:
    """SegNet width 1/16 with non-trivial BN statistics and biases, in eval mode."""
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
