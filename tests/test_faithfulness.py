"""Faithfulness: region perturbation, AOPC, sanity checks, the command (issue 11)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _cli import run_cli
from torch import nn

import segscope
from segscope.checkpoint import save_model
from segscope.errors import SegscopeError
from segscope.explain import Concept
from segscope.faithfulness import evaluate_faithfulness, mean_interval, sobel
from segscope.perturbation import (
    ConceptScorer,
    baseline_image,
    concept_weights,
    gaussian_blur,
    perturbation_curves,
)
from segscope.sanity import cascading_randomisation, flag_unchanged, ssim


class RegionModel(nn.Module):
    """Class 1's score at every pixel is s·Σ (pixels of a fixed region, all channels);
    class 0's is 0. Only the region matters, linearly."""

    class_names = ("other", "region")

    def __init__(self, region: torch.Tensor, scale: float = 0.5) -> None:
        super().__init__()
        self.register_buffer("region", region.float())
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = (x * self.region).sum((1, 2, 3)) * self.scale
        n, _, h, w = x.shape
        one = v.view(n, 1, 1, 1).expand(n, 1, h, w)
        return torch.cat([torch.zeros_like(one), one], 1)


def _region_case():
    torch.manual_seed(3)
    h = w = 16
    region = torch.zeros(h, w)
    region[4:8, 4:12] = 1  # patches 5 and 6 of the 4x4 grid of 4x4 patches
    model = RegionModel(region).eval()
    image = torch.rand(3, h, w)
    concept = Concept.mask(1, torch.ones(h, w), assign="score")
    return model, image, concept, region


def test_aopc_of_the_true_map_matches_a_hand_computation_and_beats_random():
    model, image, concept, region = _region_case()
    s = 0.5 * 16 * 16  # scale times the pixels of the concept
    true_map = image.sum(0) * region  # gradient x input of this linear model
    g = torch.Generator().manual_seed(0)
    maps = {"true": true_map, "random": torch.rand(16, 16, generator=g)}
    curves = perturbation_curves(model, image, concept, maps, patch=4, steps=16,
                                 baseline="colour:0,0,0")
    c5 = float(image[:, 4:8, 4:8].sum()) * s
    c6 = float(image[:, 4:8, 8:12].sum()) * s
    f0, hi, lo = c5 + c6, max(c5, c6), min(c5, c6)
    t = curves["true"]
    # MoRF: the larger region patch, then the other, then 14 patches that change nothing.
    np.testing.assert_allclose(t.morf, [f0, f0 - hi] + [0.0] * 15, rtol=1e-5, atol=1e-3)
    # LeRF: the 14 irrelevant patches first (ties in grid order), then the smaller one.
    np.testing.assert_allclose(t.lerf, [f0] * 15 + [f0 - lo, 0.0], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(t.insertion, [0.0, hi] + [f0] * 15, rtol=1e-5, atol=1e-3)
    summary = t.summary()
    assert summary["aopc_morf_raw"] == pytest.approx((hi + 15 * f0) / 17, rel=1e-5)
    assert summary["aopc_lerf_raw"] == pytest.approx((lo + f0) / 17, rel=1e-5)
    assert summary["aopc_morf"] == pytest.approx((hi + 15 * f0) / 17 / f0, rel=1e-5)
    assert summary["abpc_raw"] == pytest.approx((hi + 14 * f0 - lo) / 17, rel=1e-5)
    r = curves["random"].summary()
    assert summary["aopc_morf"] > r["aopc_morf"] + 0.1
    assert summary["abpc"] > r["abpc"] + 0.1


def test_morf_of_a_map_is_lerf_of_its_negation(tiny_segnet):
    torch.manual_seed(1)
    image = torch.rand(3, 32, 48)
    concept = Concept.mask(1, torch.ones(32, 48), assign="score")
    a = torch.randint(-3, 4, (32, 48)).float()  # many ties
    for patch in (1, 8):
        cur = perturbation_curves(tiny_segnet, image, concept, {"a": a, "neg": -a},
                                  patch=patch, steps=6, baseline="blur:2")
        np.testing.assert_allclose(cur["a"].morf, cur["neg"].lerf, rtol=1e-6)
        np.testing.assert_allclose(cur["a"].lerf, cur["neg"].morf, rtol=1e-6)


def test_batched_curves_equal_step_by_step(tiny_segnet):
    torch.manual_seed(2)
    h, w, p = 32, 48, 8
    image = torch.rand(3, h, w)
    rel = torch.randn(h, w)
    concept = Concept.mask(2, torch.rand(h, w) > 0.5, assign="prob")
    cur = perturbation_curves(tiny_segnet, image, concept, {"m": rel}, patch=p, steps=24,
                              baseline="noise", seed=7)["m"]
    # The reference: one patch per step, one forward per perturbed image, in Python loops.
    base = baseline_image(image, "noise", 7)
    tiles = [(y, x) for y in range(0, h, p) for x in range(0, w, p)]
    sums = [float(rel[y:y + p, x:x + p].sum()) for y, x in tiles]
    order = sorted(range(len(tiles)), key=lambda i: (-sums[i], i))
    sel = concept.pixels

    def score(x):
        with torch.no_grad():
            prob = torch.softmax(tiny_segnet(x[None])[0], 0)
        return float(prob[2][sel].double().sum())

    x = image.clone()
    expected = [score(x)]
    for i in order:
        y0, x0 = tiles[i]
        x[:, y0:y0 + p, x0:x0 + p] = base[:, y0:y0 + p, x0:x0 + p]
        expected.append(score(x))
    np.testing.assert_allclose(cur.morf, expected, rtol=1e-5, atol=1e-7)


def test_scorer_chunks_give_the_same_scores(tiny_segnet):
    image = torch.rand(3, 32, 32)
    w, soft, _ = concept_weights(tiny_segnet, image, Concept.mask(1, torch.ones(32, 32)))
    keep = torch.rand(7, 32, 32) > 0.5
    big = ConceptScorer(tiny_segnet, w, soft)
    small = ConceptScorer(tiny_segnet, w, soft, budget=1)
    assert small.chunk == 1 and big.chunk >= 7
    base = torch.zeros(3, 32, 32)
    np.testing.assert_allclose(big.masked(image, base, keep), small.masked(image, base, keep),
                               rtol=1e-5)


def test_blur_baseline_is_a_normalised_gaussian():
    image = torch.zeros(3, 31, 31)
    image[:, 15, 15] = 1.0
    out = gaussian_blur(image, 2.0)
    t = torch.arange(-15, 16, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / 2.0) ** 2)
    g = g / torch.exp(-0.5 * (torch.arange(-6, 7, dtype=torch.float64) / 2.0) ** 2).sum()
    g[(t.abs() > 6)] = 0
    np.testing.assert_allclose(out[0].double(), g[:, None] * g[None, :], atol=1e-6)
    assert float(out.sum()) == pytest.approx(3.0, rel=1e-5)


def test_ssim_identity_and_skimage():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(40, 50, generator=g) - 0.3
    b = a + 0.2 * torch.rand(40, 50, generator=g)
    assert ssim(a, a) == pytest.approx(1.0)
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is not installed")
    an, bn = (a / a.abs().max()).double().numpy(), (b / b.abs().max()).double().numpy()
    ref = metrics.structural_similarity(an, bn, data_range=2.0, gaussian_weights=True,
                                        sigma=1.5, use_sample_covariance=True)
    assert ssim(a, b) == pytest.approx(ref, abs=1e-6)


def test_sanity_check_flags_the_edge_map(tiny_segnet):
    from segscope.faithfulness import explain_map

    torch.manual_seed(4)
    image = torch.rand(3, 32, 48)
    concept = Concept.mask(1, torch.ones(32, 48), assign="score")

    def explain(model, method):
        return explain_map(model, image, concept, method)

    res = cascading_randomisation(tiny_segnet, image, explain, ["edge", "sensitivity"],
                                  steps=3)
    assert res.counts[-1] == len([m for m in tiny_segnet.modules()
                                  if isinstance(m, nn.Conv2d)])
    np.testing.assert_allclose(res.spearman["edge"], 1.0)
    np.testing.assert_allclose(res.ssim["edge"], 1.0)
    assert res.spearman["sensitivity"][-1] < 0.5
    assert flag_unchanged(res.spearman) == ["edge"]
    # the magnitude counts: a map that turns into the trained one's negative is flagged
    assert flag_unchanged({"inverted": np.array([0.2, -0.9]), "noise": np.array([0.3, 0.1]),
                           "two_images": np.array([[0.0, -0.6], [0.0, 0.5]])}) == \
        ["inverted", "two_images"]
    # the trained model is untouched
    assert torch.equal(explain(tiny_segnet, "sensitivity"), explain(tiny_segnet, "sensitivity"))


def test_sobel_of_a_vertical_step():
    image = torch.zeros(3, 6, 6)
    image[:, :, 3:] = 1.0
    e = sobel(image)
    assert torch.allclose(e[:, 2], torch.full((6,), 4.0))
    assert torch.allclose(e[:, 3], torch.full((6,), 4.0))
    assert float(e[:, :2].abs().sum()) == 0.0


def test_mean_interval():
    assert mean_interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0, 3)
    m, lo, hi, n = mean_interval([0.0, 1.0, np.nan, 2.0, 3.0])
    assert (m, n) == (1.5, 4) and 0.0 <= lo < m < hi <= 3.0


def test_api_table_and_bad_input(tiny_segnet):
    torch.manual_seed(5)
    images = [torch.rand(3, 32, 32) for _ in range(2)]
    concept = Concept.mask(0, torch.ones(32, 32))
    res = evaluate_faithfulness(tiny_segnet, images, concept, methods=["lrp", "random"],
                                rules=["epsilon", "first=zbox,default=alpha1beta0"], patch=8,
                                steps=4, sanity_images=1, sanity_steps=2)
    assert res.methods == ["lrp:epsilon", "lrp:first=zbox,default=alpha1beta0", "random"]
    assert [r["images"] for r in res.table] == [2, 2, 2]
    for row in res.table:
        vals = [im.summaries[row["method"]]["aopc_morf"] for im in res.images]
        assert row["aopc_morf"] == pytest.approx(np.mean(vals))
        assert row["aopc_morf_lo"] <= row["aopc_morf"] <= row["aopc_morf_hi"]
    assert res.sanity["images"] == 1 and "random" in res.sanity["flagged"]
    bad = [
        (dict(patch=33), "larger than"),
        (dict(steps=0), "at least 1"),
        (dict(methods=["nope"]), "unknown method"),
        (dict(baseline="zebra"), "unknown baseline"),
        (dict(rules=["nope"]), "unknown LRP rule"),
    ]
    for kw, msg in bad:
        with pytest.raises(SegscopeError, match=msg):
            evaluate_faithfulness(tiny_segnet, images, concept, **kw)
    empty = Concept.from_prediction(1, "tp", torch.full((32, 32), 255))
    with pytest.raises(SegscopeError, match="no true positives"):
        evaluate_faithfulness(tiny_segnet, images, empty, methods=["random"])


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_segnet):
    return save_model(tiny_segnet, tmp_path / "model.safetensors")


def test_cli_writes_the_folder_and_resumes(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "faith"
    args = ["faithfulness", "-c", tiny_checkpoint, "--data", "synthetic:2:narrow:1",
            "--size", "32x48", "--concept", "label", "--class", "road", "--images", "2",
            "--methods", "lrp,gradcam,random,edge", "--rule", "alpha1beta0", "--steps", "4",
            "--sanity-images", "1", "--sanity-steps", "2", "--out", out, "-q"]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    for name in ("aopc.csv", "per_image.csv", "curves.csv", "sanity.csv", "curves.png",
                 "sanity.png", "maps.png", "summary.json", "report.html"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"] == ["lrp:alpha1beta0", "gradcam", "random", "edge"]
    assert "edge" in summary["sanity"]["flagged"]
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "http" not in page.replace("http-equiv", "")
    before = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "--resume" in err
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == before
    assert json.loads((out / "summary.json").read_text())["table"] == summary["table"]
    # other settings on resume: refused, naming what differs
    steps = args.index("--steps") + 1
    code, _, err = run_cli([*args[:steps], "6", *args[steps + 1:], "--resume"], capsys)
    assert code == 2 and "other settings (steps: 4 -> 6)" in err, err


@pytest.mark.parametrize("extra, message", [
    (["--patch", "100"], "larger than the 32x48 image"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--methods", "lrp,nope"], "unknown method 'nope'"),
    (["--methods", "lrp:epsilon"], "--methods lrp --rule epsilon"),
    (["--baseline", "zebra"], "unknown baseline 'zebra'"),
    (["--class", "3", "--concept", "label"], "selects no pixels in any of the 1 images"),
    # an empty list ran every method; a rule without lrp was ignored
    (["--methods", " , "], "--methods names no method"),
    (["--methods", "gradcam", "--rule", "epsilon"], "--rule applies to the lrp method"),
    (["--seed", "-1"], "-1 is not in the range"),
])
def test_cli_bad_input_one_line(tmp_path, capsys, extra, message):
    # four classes: class 3 never occurs in the ROAD3 labels, an empty concept
    torch.manual_seed(0)
    ckpt = save_model(segscope.SegNet(num_classes=4, width=0.0625), tmp_path / "m.safetensors")
    args = ["faithfulness", "-c", ckpt, "--data", "synthetic:1:narrow:1",
            "--size", "32x48", "--methods", "random", "--images", "1", "--class", "1", "--out",
            tmp_path / "o", "-q", *extra]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert err.startswith("segscope: error:") and message in err and err.count("\n") == 1, err


def test_quantus_region_perturbation_agrees():
    quantus = pytest.importorskip("quantus", reason="quantus is not installed (compare extra)")
    from benchmarks.bench_faithfulness import quantise, quantus_aopc

    torch.manual_seed(6)
    model = segscope.SegNet(width=0.0625).eval()
    image = torch.rand(3, 32, 32)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:24, 4:20] = True
    concept = Concept.mask(1, mask)
    rel = quantise(torch.randn(32, 32))  # exact float32 patch sums (see the benchmark)
    ours = perturbation_curves(model, image, concept, {"m": rel}, patch=8, steps=16,
                               baseline="colour:0,0,0")["m"].summary()["aopc_morf_raw"]
    theirs = quantus_aopc(quantus, model, [image], [mask], [1], [[rel]], patch=8, regions=16)[0][0]
    assert ours == pytest.approx(theirs, abs=1e-4)


def test_cli_reads_a_plain_folder_with_its_id_map(tmp_path, tiny_checkpoint, capsys):
    # a folder of image/label pairs in the user's ids (7 = road, 0 = everything else)
    from PIL import Image

    for sub in ("images", "labels"):
        (tmp_path / "mine" / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    label = np.zeros((32, 48), np.uint8)
    label[16:, :] = 7
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(
            tmp_path / "mine" / "images" / f"{i}.png")
        Image.fromarray(label).save(tmp_path / "mine" / "labels" / f"{i}.png")
    (tmp_path / "map.json").write_text('{"0": "background", "7": "road"}')
    args = ["faithfulness", "-c", tiny_checkpoint, "--data", tmp_path / "mine",
            "--data-kind", "folder", "--id-map", tmp_path / "map.json", "--size", "32x48",
            "--concept", "label", "--class", "road", "--images", "2", "--methods", "random",
            "--steps", "2", "--sanity-images", "0", "--out", tmp_path / "faith", "-q"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    per_image = (tmp_path / "faith" / "per_image.csv").read_text().splitlines()
    assert len(per_image) == 1 + 2 * 1  # header, then one row per image and method
