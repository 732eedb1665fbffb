"""Incremental SegNet scoring and the shared forwards of region perturbation (issue 11)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segscope.explain import Concept
from segscope.incremental import IncrementalSegNet, _pool, _unpool, fold_batchnorm
from segscope.perturbation import (
    ConceptScorer,
    baseline_image,
    concept_weights,
    perturbation_curves,
)


def _plain_scores(model, image, base, keep, weights, softmax):
    """The reference: one plain forward of the untouched model per perturbed image."""
    x = base + (image - base) * keep[:, None].float()
    with torch.no_grad():
        y = model(torch.cat([image[None], base[None], x]))
    if softmax:
        y = torch.softmax(y, 1)
    return (y.double() * weights.double()).sum((1, 2, 3)).numpy()


@pytest.mark.parametrize("h,w,cell,per_step,soft,tiles", [
    (32, 48, 8, 1, False, True),  # one patch per step: tiles in the first encoder blocks
    (40, 64, 8, 1, True, True),   # padded to 64x64: edge patches reach into the padding
    (37, 45, 4, 3, True, False),  # padded, several patches a step: whole images
    (40, 40, 1, 5, False, True),  # single pixels, several a step
])
def test_incremental_scores_equal_plain_forwards(tiny_segnet, h, w, cell, per_step, soft,
                                                 tiles):
    g = torch.Generator().manual_seed(h)
    image = torch.rand(3, h, w, generator=g)
    base = baseline_image(image, "blur:2")
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[h // 3:, w // 4:] = True  # the decoder runs on a window
    weights, _, _ = concept_weights(tiny_segnet, image, Concept.mask(1, mask))
    # two chains in the order region perturbation makes them: deletion from the image
    # and insertion from the baseline, each step replacing the next cells
    ch, cw = -(-h // cell), -(-w // cell)
    order = torch.randperm(ch * cw, generator=g)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    cell_rank = rank.view(ch, cw).repeat_interleave(cell, 0).repeat_interleave(cell, 1)[:h, :w]
    keep, parent = [], []
    for start in (-1, -2):
        for k in range(1, 7):
            shown = cell_rank < k * per_step
            keep.append(~shown if start == -1 else shown)
            parent.append(start if k == 1 else len(keep) - 2)
    keep_t = torch.stack(keep)
    engine = IncrementalSegNet(tiny_segnet, weights, soft, budget=2**30)
    ours = engine(image, base, keep_t, parent, cell).numpy()
    ref = _plain_scores(tiny_segnet, image, base, keep_t, weights, soft)
    np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=1e-6 * np.abs(ref).max())
    assert (engine.tiled[0] > 0) == tiles  # the first block ran on tiles


def test_incremental_chunks_restart_from_the_image(tiny_segnet):
    # A budget of one image per chunk: every parent is gone, each job starts afresh.
    image = torch.rand(3, 32, 32)
    base = torch.zeros(3, 32, 32)
    weights, _, _ = concept_weights(tiny_segnet, image, Concept.mask(2, torch.ones(32, 32)))
    keep = torch.ones(4, 32, 32, dtype=torch.bool)
    for k in range(4):
        keep[k:, 8 * k:8 * k + 8, :8] = False
    parent = [-1, 0, 1, 2]
    engine = IncrementalSegNet(tiny_segnet, weights, False, budget=1)
    ours = engine(image, base, keep, parent, 8).numpy()
    ref = _plain_scores(tiny_segnet, image, base, keep, weights, False)
    np.testing.assert_allclose(ours, ref, rtol=2e-5)


def test_unpool_on_a_window_equals_max_unpool_cropped():
    x = torch.relu(torch.randn(2, 3, 8, 12))
    x[0, 0, 2:4, 2:4] = 1.0  # a tie: max_pool2d keeps the first
    p, idx = _pool(x.contiguous(memory_format=torch.channels_last))
    whole = F.max_unpool2d(p, idx, 2, 2, output_size=(8, 12))
    for y0, y1, x0, x1 in ((2, 6, 2, 8), (4, 8, 0, 12), (0, 8, 0, 12)):
        cells = (slice(None), slice(None), slice(y0 // 2, y1 // 2), slice(x0 // 2, x1 // 2))
        got = _unpool(p[cells], idx[cells], 12, (y0, y1, x0, x1))
        assert torch.equal(got, whole[:, :, y0:y1, x0:x1])


def test_fold_batchnorm_keeps_the_outputs(tiny_segnet):
    import copy

    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
    with torch.no_grad():
        seq[1].running_mean.uniform_(-1, 1)
        seq[1].running_var.uniform_(0.5, 2)
    seq.eval()
    x = torch.rand(2, 3, 16, 16)
    for model in (seq, tiny_segnet):
        folded = fold_batchnorm(copy.deepcopy(model))
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        with torch.no_grad():
            torch.testing.assert_close(folded(x.clone()), model(x), rtol=1e-5, atol=1e-5)


def test_shared_perturbed_images_run_once_with_the_same_curves(tiny_segnet):
    torch.manual_seed(4)
    image = torch.rand(3, 32, 48)
    concept = Concept.mask(1, torch.ones(32, 48))
    a = torch.randn(32, 48)
    maps = {"a": a, "copy": a.clone(), "b": torch.randn(32, 48)}
    weights, soft, _ = concept_weights(tiny_segnet, image, concept)
    kw = dict(patch=8, steps=8, regions=8, baseline="mean")
    inc = ConceptScorer(tiny_segnet, weights, soft)
    cur = perturbation_curves(tiny_segnet, image, concept, maps, scorer=inc, **kw)
    # one image per distinct mask: "copy" adds nothing, and the curves' ends are shared
    masks = {(n, c, k) for n in ("a", "b") for c in ("morf", "lerf", "insertion")
             for k in range(1, 9)}
    assert inc.forwards <= 2 + len(masks)
    # the plain loop: every curve of every map on its own, whole images, no sharing
    for name, m in maps.items():
        plain = ConceptScorer(tiny_segnet, weights, soft, incremental=False)
        ref = perturbation_curves(tiny_segnet, image, concept, {name: m}, scorer=plain, **kw)
        for c in ("morf", "lerf", "insertion"):
            np.testing.assert_allclose(getattr(cur[name], c), getattr(ref[name], c),
                                       rtol=2e-5)
    assert inc.engine is not None and inc.engine.tiled[0] > 0


def test_mask_concept_weights_need_no_forward_pass(tiny_segnet):
    image = torch.rand(3, 32, 32)
    mask = torch.rand(32, 32) > 0.5
    with torch.no_grad():
        scores = tiny_segnet(image[None])[0]
    calls = []
    handle = tiny_segnet.register_forward_hook(lambda *a: calls.append(1))
    concepts = (Concept.mask(1, mask), Concept.mask("markings", mask, assign="prob"))
    try:
        got = [concept_weights(tiny_segnet, image, c) for c in concepts]
    finally:
        handle.remove()
    assert not calls  # no forward pass ran
    for concept, (weights, soft, sel) in zip(concepts, got, strict=True):
        expected = concept.output_weights(scores, tiny_segnet.class_names)
        assert torch.equal(weights, expected) and torch.equal(sel, mask)
        assert soft == (concept.assign == "prob")
