"""segscope diagnose: statistics, failure scores, fingerprints, the CLI and torchrun."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import run_cli, torchrun

import segscope
from segscope.analysis import jensen_shannon, spearman
from segscope.diagnose import Source, analyse, fingerprint_source, open_synthetic
from segscope.failure import (
    atc_scores,
    atc_threshold,
    fit_failure_model,
    fit_reference,
    js_rows,
    score_images,
)
from segscope.fingerprint import (
    DIAGNOSE_RULE,
    SCALARS,
    Fingerprints,
    Layout,
    image_fingerprint,
    image_fingerprints,
    layout_of,
)
from segscope.stats import bootstrap_interval, correlation_row, kendall

ROOT = Path(__file__).resolve().parents[1]


# -- statistics against hand values ---------------------------------------------------------
def test_spearman_and_kendall_hand_values():
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    # d = (-1, 1, -1, 1, 0): rho = 1 - 6*4 / (5*24) = 0.8; 8 concordant, 2 discordant.
    assert spearman(x, y) == pytest.approx(0.8)
    assert kendall(x, y) == pytest.approx(0.6)
    # tau-b with one tie in x and one in y: P=4, Q=0, n0=6 -> 4 / sqrt(5*5).
    assert kendall([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)
    assert kendall([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall([1, 1, 1], [1, 2, 3]))


def test_bootstrap_interval_and_row():
    x = np.arange(20.0)
    assert bootstrap_interval(spearman, x, x) == (pytest.approx(1.0), pytest.approx(1.0))
    rng = np.random.default_rng(1)
    y = x + rng.normal(0, 5, 20)
    row = correlation_row(x, y, n_boot=300, seed=3)
    assert row["spearman_lo"] <= row["spearman"] <= row["spearman_hi"]
    assert row["kendall_lo"] <= row["kendall"] <= row["kendall_hi"]
    assert row == correlation_row(x, y, n_boot=300, seed=3)  # same seed, same interval
    assert correlation_row([1.0, np.nan, 3.0, 4.0], [1.0, 2.0, 3.0, 5.0], n_boot=10)["n"] == 3
    # --bootstrap 0: the correlations without intervals (it raised IndexError)
    row0 = correlation_row(x, y, n_boot=0)
    assert row0["spearman"] == row["spearman"] and np.isnan(row0["spearman_lo"])
    assert np.isnan(row0["kendall_hi"])


# -- failure scores on hand-made fingerprints -------------------------------------------------
def test_js_rows_matches_analysis():
    rng = np.random.default_rng(0)
    a, b = rng.random((4, 6)), rng.random((3, 6))
    a[1] = 0  # an all-zero profile
    got = js_rows(a, b)
    want = np.array([[jensen_shannon(p, q) for q in b] for p in a])
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert js_rows(b, b).diagonal() == pytest.approx(0.0, abs=1e-12)


def test_atc_threshold_on_constructed_confidences():
    # 10 bins over [0, 1]: 100 pixels in each of the bins 0.5-0.6, ..., 0.9-1.0.
    hist = np.zeros(10)
    hist[5:] = 100
    # 60 % accuracy: 60 % of the pixels must lie above t -> the upper three bins, t = 0.7.
    assert atc_threshold(hist, 0.6) == pytest.approx(0.7)
    assert atc_threshold(hist, 1.0) == pytest.approx(0.5)
    assert atc_threshold(hist, 0.0) == pytest.approx(1.0)
    # the predicted accuracy of an image: its share of pixels above t
    img = np.zeros(10)
    img[6], img[8] = 30, 10
    assert atc_scores(img, 0.7)[0] == pytest.approx(10 / 40)


def _fingerprints(fv: np.ndarray, layout: Layout) -> Fingerprints:
    n = fv.shape[0]
    scalars = np.zeros((n, len(SCALARS)))
    scalars[:, SCALARS.index("iou")] = np.nan
    scalars[:, SCALARS.index("empty")] = (fv.sum(1) == 0)
    return Fingerprints(fv=fv, act=np.ones((n, 2)), confidence=np.ones((n, 10)),
                        colour=np.ones((n, 48)) / 16, shares=np.ones((n, 3)) / 3,
                        scalars=scalars, layout=layout)


def test_identical_images_give_distance_zero():
    layout = Layout(("a", "b"), (3, 2), ("x",), (2,))
    fv = np.array([[1.0, 2.0, 0.0, 0.5, 1.5]] * 3)
    ref = fit_reference(_fingerprints(fv, layout))
    s = score_images(ref, _fingerprints(fv[:1], layout))
    for name in ("fv_js", "fv_knn", "fv_z", "act_js", "colour_js", "share_shift"):
        assert s[name][0] == pytest.approx(0.0, abs=1e-12), name


def test_moved_profile_gives_expected_ranking():
    layout = Layout(("a", "b"), (4, 4), ("x",), (2,))
    rng = np.random.default_rng(0)
    base = np.array([2.0, 1.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0])
    syn = base * rng.uniform(0.95, 1.05, (30, 8))
    # real images moved away from the synthetic profile by growing amounts
    move = np.array([0.0, -1.0, 1.0, 0.0, 0.8, -0.8, 0.0, 0.0])
    real = np.stack([base + t * move for t in (0.0, 0.2, 0.5, 0.9)])
    ref = fit_reference(_fingerprints(syn, layout))
    s = score_images(ref, _fingerprints(real, layout))
    for name in ("failure_score", "fv_js", "fv_js_z", "fv_knn", "fv_z"):
        assert list(np.argsort(s[name])) == [0, 1, 2, 3], name


def test_conflict_is_the_median_share_of_relevance_against_each_layers_total():
    """fv sum to the channel count, so a layer's negative fv oppose its net total; by hand:
    layer a (3 ch) [2, -1, 2]: 1 / 5; b (2 ch) [1, 1]: 0; c (2 ch) [3, -1]: 1 / 4 ->
    median 0.2. A profile without negative relevance (α1β0) has conflict 0 everywhere."""
    from segscope.failure import layer_conflict

    layout = Layout(("a", "b", "c"), (3, 2, 2), ("x",), (2,))
    row = np.array([[2.0, -1.0, 2.0, 1.0, 1.0, 3.0, -1.0],
                    [1.0, 1.0, 1.0, 0.5, 1.5, 0.0, 2.0]])
    per = layer_conflict(row, layout.slices())
    np.testing.assert_allclose(per, [[0.2, 0.0, 0.25], [0.0, 0.0, 0.0]], atol=1e-15)
    syn = _fingerprints(np.array([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]] * 3), layout)
    s = score_images(fit_reference(syn), _fingerprints(row, layout))
    np.testing.assert_allclose(s["fv_conflict"], [0.2, 0.0], atol=1e-15)
    assert layer_conflict(np.zeros((1, 7)), layout.slices()).tolist() == [[0.0, 0.0, 0.0]]


def test_empty_concepts_are_kept_marked_and_scored():
    layout = Layout(("a",), (3,), ("x",), (2,))
    syn = _fingerprints(np.array([[1.0, 1.0, 1.0], [1.1, 0.9, 1.0], [0.9, 1.1, 1.0]]), layout)
    real_fv = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [2.0, 0.5, 0.5]])
    real = _fingerprints(real_fv, layout)
    real.scalars[:, SCALARS.index("iou")] = [0.9, 0.0, 0.5]
    src = lambda what, n: Source(what, what, None, [f"{what}{i}" for i in range(n)],  # noqa: E731
                                 [f"p{i}" for i in range(n)], True)
    d = analyse(fit_reference(syn), syn, real, src("synthetic", 3), src("real", 3),
                ("background", "road", "markings"), {}, {}, n_boot=20)
    rows = [r for r in d.rows if r["dataset"] == "real"]
    assert len(rows) == 3 and [r["empty_concept"] for r in rows] == [0, 1, 0]
    assert np.isfinite(rows[1]["failure_score"])
    assert rows[1]["failure_score"] == max(r["failure_score"] for r in rows)
    assert rows[1]["fv_js"] == pytest.approx(1.0)  # empty vs non-empty: JS 1 per layer


def _calibration(n: int, layout: Layout, seed: int) -> tuple[Fingerprints, np.ndarray]:
    """Hand-made calibration images whose IoU falls as one layer's profile moves away from
    the synthetic one; their entropy is noise."""
    rng = np.random.default_rng(seed)
    base = np.array([2.0, 1.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0])
    move = np.array([0.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    t = rng.uniform(0, 0.9, n)
    fp = _fingerprints(base + t[:, None] * move + rng.normal(0, 0.01, (n, 8)), layout)
    fp.scalars[:, SCALARS.index("entropy")] = rng.random(n)
    fp.scalars[:, SCALARS.index("iou")] = 0.9 - 0.5 * t
    return fp, t


def test_failure_model_learns_from_calibration_only():
    layout = Layout(("a", "b"), (4, 4), ("x",), (2,))
    rng = np.random.default_rng(0)
    base = np.array([2.0, 1.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0])
    ref = fit_reference(_fingerprints(base * rng.uniform(0.97, 1.03, (20, 8)), layout))
    calib, _ = _calibration(60, layout, seed=1)
    groups = np.repeat([0, 1, 2], 20)
    model = fit_failure_model(ref, calib, groups, ["p0", "p1", "p2"])
    # the only informative feature is the fingerprint distance: it carries the weight
    assert model.features[int(np.abs(model.weights.mean(0)).argmax())] == "fv_knn"
    assert model.importance()["fv_knn"] > 0.5
    assert set(model.held_out) == {"p0", "p1", "p2"}
    assert min(model.held_out.values()) > 0.9  # each set's ranking from the other two
    assert model.held_out_skipped == {}
    # a set too small to be held out is named with the reason, not left out unsaid
    small = fit_failure_model(ref, calib.take(np.arange(22)), np.repeat([0, 1, 2], [10, 10, 2]),
                              ["p0", "p1", "p2"])
    assert set(small.held_out) == {"p0", "p1"} and set(small.held_out_skipped) == {"p2"}
    assert "2 usable image(s) in it" in small.held_out_skipped["p2"]
    assert small.as_dict()["held_out_skipped"] == small.held_out_skipped
    # new images (without labels): failure score = 1 - predicted IoU, ranked by the move
    new, t = _calibration(15, layout, seed=2)
    new.scalars[:, SCALARS.index("iou")] = np.nan
    s = score_images(ref, new, model=model)
    assert spearman(s["failure_score"], t) > 0.9
    # on the IoU scale, shrunk towards the calibration mean by the ridge penalties
    pred, iou = 1 - s["failure_score"], 0.9 - 0.5 * t
    assert iou.min() - 0.05 < pred.min() and pred.max() < iou.max() + 0.05
    assert np.mean(pred) == pytest.approx(np.mean(iou), abs=0.1)
    with pytest.raises(segscope.SegscopeError, match="at least 8"):
        fit_failure_model(ref, calib.take(np.arange(5)))
    flat = calib.take(np.arange(20))
    flat.scalars[:, SCALARS.index("iou")] = 0.5
    with pytest.raises(segscope.SegscopeError, match="same IoU"):
        fit_failure_model(ref, flat)


def test_reference_needs_two_images():
    layout = Layout(("a",), (2,), ("x",), (2,))
    with pytest.raises(segscope.SegscopeError, match="at least 2"):
        fit_reference(_fingerprints(np.ones((1, 2)), layout))
    with pytest.raises(segscope.SegscopeError, match="predicts the concept class in only 1"):
        fit_reference(_fingerprints(np.array([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]), layout))


# -- fingerprints of a real model -----------------------------------------------------------
def _assert_same_row(a: Fingerprints, b: Fingerprints, fv_tol: float = 1e-5) -> None:
    """Two fingerprints of one image, up to the float rounding of a batched convolution
    (~1e-7 of a layer's largest channel; feature values average 1 per layer), which may
    move a pixel's max-softmax across a histogram bin edge. ``fv_tol``: how far that
    rounding may move a feature value under the sweep's rule."""
    pixels = a.confidence[0].sum()
    assert pixels == b.confidence[0].sum()
    np.testing.assert_allclose(np.cumsum(a.confidence[0]), np.cumsum(b.confidence[0]),
                               atol=max(2.0, 1e-3 * pixels))
    for k in ("fv", "act", "colour", "shares", "scalars"):
        tol = fv_tol if k == "fv" else 1e-5
        np.testing.assert_allclose(getattr(a, k)[0], getattr(b, k)[0], rtol=tol, atol=tol,
                                   err_msg=k)


#: How far float rounding moves a feature value between a batched and a one-image sweep:
#: α1β0's shares are proportional to the activations (~1e-6 here); ε's, like a gradient,
#: pass a unit's whole share down once it is above ε, so a unit that rounding switches on
#: or off moves the layers below (~5e-3 here, ~2e-3 on the trained demo model, against a
#: spread of ~0.4 between images).
FV_ROUNDING = {"alpha1beta0": 1e-5, DIAGNOSE_RULE: 2e-2}


@pytest.mark.parametrize("rule", sorted(FV_ROUNDING))
def test_fingerprint_values_and_batches_equal_one_by_one(tiny_segnet, rule):
    from segscope.explain import Concept, forward_state, lrp

    # 64x128: no max-pool window of this untrained model is a constant map there, so the
    # LRP forward's pool indices equal the model's own (ties may break differently)
    syn = open_synthetic("synthetic:5:narrow:3", size=(64, 128))
    # chunks of 4 in batches of 3: one forward pass and one sweep for images 0-2
    batched = fingerprint_source(tiny_segnet, syn, 1, batch_size=3, chunk=4, rule=rule)
    assert len(batched) == 5
    for i in range(5):
        image, label = syn.dataset[i]
        one = image_fingerprint(tiny_segnet, image, 1, label=label, layout=batched.layout,
                                rule=rule)
        _assert_same_row(batched.take([i]), one, FV_ROUNDING[rule])
    # independent check of one row: fv of a kept layer, confidence, shares, IoU
    image, label = syn.dataset[0]
    scores = forward_state(tiny_segnet, image).scores  # BatchNorm folded
    with torch.no_grad():
        plain = tiny_segnet(image[None])[0]
    torch.testing.assert_close(scores, plain, rtol=1e-4, atol=1e-4)
    pred = scores.argmax(0)
    probs = scores.softmax(0)
    row = batched.take([0])
    if bool((pred == 1).any()):
        e = lrp(tiny_segnet, image, Concept.mask("road", pred == 1), rule=rule,
                keep=["conv2_1"])
        np.testing.assert_allclose(row.layer_fv("conv2_1")[0], e.feature_values("conv2_1"),
                                   rtol=1e-4, atol=FV_ROUNDING[rule])
    assert row.scalar("max_softmax")[0] == pytest.approx(float(probs.max(0)[0].mean()), rel=1e-6)
    share = [(pred == k).float().mean().item() for k in range(3)]
    np.testing.assert_allclose(row.shares[0], share, atol=1e-9)
    inter = ((pred == 1) & (label == 1)).sum().item()
    union = ((pred == 1) | (label == 1)).sum().item()
    if union:
        assert row.scalar("iou")[0] == pytest.approx(inter / union)
    assert row.confidence[0].sum() == 64 * 128


def test_batch_with_an_empty_concept_equals_images_one_by_one(tiny_segnet):
    # 64x128 scenes: no max-pool window of them is flat, so batched and single forward
    # passes pick the same winners (on a flat window, rounding decides the tie)
    syn = open_synthetic("synthetic:3:narrow:3", size=(64, 128))
    images = torch.stack([syn.dataset[i][0] for i in range(3)])
    # lower class 0's output bias until one image has no pixel predicted as class 0:
    # the batch then mixes an empty concept with two others
    with torch.no_grad():
        s = tiny_segnet(images)
        margin = (s[:, 0] - s[:, 1:].max(1).values).flatten(1).max(1).values  # (3,)
        low, second = margin.sort().values[:2]
        tiny_segnet.conv1_1_D.bias[0] -= (low + second) / 2
    empty = int(margin.argmin())
    layout = layout_of(tiny_segnet, (64, 128))
    batch = image_fingerprints(tiny_segnet, images, 0, layout=layout)
    assert batch.scalar("empty").tolist() == [float(i == empty) for i in range(3)]
    assert not batch.fv[empty].any() and batch.scalar("output_total")[empty] == 0
    assert np.delete(batch.fv, empty, axis=0).any(1).all()
    for i, image in enumerate(images):
        _assert_same_row(batch.take([i]), image_fingerprint(tiny_segnet, image, 0,
                                                             layout=layout),
                         FV_ROUNDING[DIAGNOSE_RULE])


# -- the command line -----------------------------------------------------------------------
@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_segnet) -> Path:
    path = tmp_path / "tiny.safetensors"
    segscope.save_model(tiny_segnet, path)
    return path


def _real_folder(root: Path, n: int, labels: bool = True) -> Path:
    """A 'real' folder of image/label pairs in ROAD3 ids (id map identity)."""
    from segscope.data.io import write_png
    from segscope.data.synthetic import SyntheticRoads

    data = SyntheticRoads(n, size=(32, 64), seed=9, preset="randomized")
    (root / "images").mkdir(parents=True)
    if labels:
        (root / "labels").mkdir()
    for i in range(n):
        image, label = data.render(i)
        write_png(root / "images" / f"f{i:03d}.png", (image * 255 + 0.5).astype(np.uint8))
        if labels:
            write_png(root / "labels" / f"f{i:03d}.png", label)
    (root / "map.json").write_text('{"0": 0, "1": 1, "2": 2, "255": 255}')
    return root


def test_images_at_the_training_scale_by_default(tmp_path):
    from segscope.diagnose import training_sizes

    real = _real_folder(tmp_path / "real", 1, labels=False) / "images"  # 32x64 images
    # real images at the training width, their own aspect; synthetic scenes the same size
    assert training_sizes({"image_size": [48, 128]}, real) == ((64, 128), (64, 128))
    assert training_sizes({"train_config": {"size": [40, 32]}}, real) == ((32, 32), (32, 32))
    assert training_sizes({}, real) == (None, None)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_rule_default_is_the_diagnosis_rule():
    from segscope.cli.diagnose import diagnose

    (rule,) = [p for p in diagnose.params if p.name == "rule"]
    assert rule.default == DIAGNOSE_RULE == "epsilon"


def test_cli_writes_folder_and_resumes(tmp_path, tiny_checkpoint, capsys):
    real = _real_folder(tmp_path / "real", 6)
    out = tmp_path / "out"
    args = ["diagnose", "-c", tiny_checkpoint, "--synthetic", "synthetic:4:narrow:1",
            "--real", real, "--data-kind", "folder", "--id-map", real / "map.json",
            "--size", "32x64", "--out", out, "--bootstrap", "50", "--top", "1", "--chunk", "4",
            "--calibration", "synthetic:5:narrow:7", "--calibration", "synthetic:5:urban:7",
            "-q"]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    for name in ("images.csv", "diagnosis.json", "report.html", "layer_shift.png",
                 "fingerprints/real-00001.npz"):
        assert (out / name).is_file(), name
    rows = _read_csv(out / "images.csv")
    assert [r["dataset"] for r in rows] == ["synthetic"] * 4 + ["real"] * 6
    assert rows[0]["path"] == "synthetic:0" and Path(rows[4]["path"]).is_absolute()
    for col in ("failure_score", "max_softmax", "entropy", "atc", "act_js", "colour_js",
                "share_road", "iou", "empty_concept"):
        assert col in rows[0]
    html = (out / "report.html").read_text()
    assert "Spearman" in html and "data:image/png;base64," in html and 'src="http' not in html
    import json

    summary = json.loads((out / "diagnosis.json").read_text())
    assert summary["settings"]["calibration"] == ["synthetic:5:narrow:7", "synthetic:5:urban:7"]
    assert (out / "fingerprints" / "calibration-1-00001.npz").is_file()
    fm = summary["failure_model"]
    if "features" in fm:  # fitted: failure_score = 1 - predicted IoU
        assert summary["failure_score"] == "calibrated" and fm["n_images"] <= 10
    else:  # the tiny model predicts too little road on them: the plain distance, said so
        assert summary["failure_score"] == "fv_knn" and "not fitted" in fm["skipped"]
        assert all(r["failure_score"] == r["fv_knn"] for r in rows)
    assert "How the failure score is made" in html
    # a second run needs --resume; it keeps the cached fingerprints and gives the same rows
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "--resume" in err
    cached = out / "fingerprints" / "real-00000.npz"
    stamp = cached.stat().st_mtime_ns
    (out / "images.csv").unlink()
    (out / "fingerprints" / "real-00001.npz").unlink()  # as if interrupted
    code, _, err = run_cli(args + ["--resume"], capsys)
    assert code == 0, err
    assert cached.stat().st_mtime_ns == stamp
    assert _read_csv(out / "images.csv") == rows
    # the rule is recorded as parsed: the default written another way is the same run
    assert summary["settings"]["rule"] == "epsilon:1e-06"
    (out / "images.csv").unlink()
    code, _, err = run_cli(args + ["--resume", "--rule", "EPSILON:0.000001"], capsys)
    assert code == 0, err
    code, _, err = run_cli(args + ["--resume", "--rule", "alpha1beta0"], capsys)
    assert code == 2 and "other settings (rule: epsilon:1e-06 -> alpha1beta0)" in err, err


@pytest.mark.parametrize("extra, message", [
    (["--labels"], "has no labels"),
    (["--class", "sky"], "sky"),
    (["--synthetic", "synthetic:1"], "at least 2"),
    (["--calibration", "synthetic:4:nowhere"], "nowhere"),
])
def test_cli_bad_input_one_line(tmp_path, tiny_checkpoint, capsys, extra, message):
    real = _real_folder(tmp_path / "real", 2, labels=False)
    args = ["diagnose", "-c", tiny_checkpoint, "--synthetic", "synthetic:3",
            "--real", real / "images", "--size", "32x64", "--out", tmp_path / "out", "-q",
            *extra]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segscope: error:") and message in lines[0]
    assert not (tmp_path / "out").exists()  # checked before the folder is claimed


def test_torchrun_two_processes_same_rows(tmp_path, tiny_checkpoint, capsys):
    pytest.importorskip("torch.distributed")
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    real = _real_folder(tmp_path / "real", 7)
    common = ["--synthetic", "synthetic:3:narrow:1", "--real", real, "--data-kind", "folder",
              "--id-map", real / "map.json", "--size", "32x64", "--bootstrap", "20",
              "--top", "0", "--chunk", "2", "--device", "cpu", "-q",
              "--calibration", "synthetic:5:narrow:2", "--calibration", "synthetic:5:urban:2"]
    code, _, err = run_cli(["diagnose", "-c", tiny_checkpoint, "--out", tmp_path / "one",
                            *common], capsys)
    assert code == 0, err
    code, stderr = torchrun(["diagnose", "-c", tiny_checkpoint, "--out", tmp_path / "two",
                             *common], timeout=300, env={"PYTHONPATH": str(ROOT)})
    assert code == 0, stderr[-2000:]
    one = _read_csv(tmp_path / "one" / "images.csv")
    two = _read_csv(tmp_path / "two" / "images.csv")
    assert len(one) == len(two) == 10
    for a, b in zip(one, two, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            if k in ("dataset", "image", "path"):
                assert a[k] == b[k]
            elif a[k] or b[k]:
                assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-4, abs=1e-6), k


def test_demo_real_adds_a_diagnosis(tmp_path):
    from test_metrics import camvid_folder

    from segscope.demo import DemoOptions, run_demo, step_diagnose, step_real

    def model(ctx) -> None:  # stands in for data/train: an untrained model predicting road
        torch.manual_seed(0)
        ctx.model = segscope.SegNet(num_classes=3, width=0.0625).eval()
        with torch.no_grad():
            ctx.model.conv1_1_D.bias.copy_(torch.tensor([0.0, 0.3, -1.0]))

    real = camvid_folder(tmp_path / "camvid", n=3, size=(64, 96))
    opts = DemoOptions.quick_options(out=str(tmp_path / "demo"), device="cpu", quiet=True,
                                     threads=1, real=str(real))
    summary = run_demo(opts, steps=[("model", model), ("real", step_real),
                                    ("diagnose", step_diagnose)])
    d = summary["diagnose"]
    assert "skipped" not in d, d
    assert Path(d["report"]).is_file()
    rows = _read_csv(Path(d["folder"]) / "images.csv")
    assert sum(r["dataset"] == "real" for r in rows) == 3


def test_synth_folder_reference_is_recorded_as_an_absolute_path(tmp_path, monkeypatch):
    from segscope.data.synth_folder import write_dataset
    from segscope.data.synthetic import SyntheticRoads

    write_dataset(SyntheticRoads(2, size=(32, 48), seed=4), tmp_path / "ref")
    monkeypatch.chdir(tmp_path)
    src = open_synthetic("ref", option="--calibration")
    assert src.spec == str((tmp_path / "ref").resolve()) and len(src) == 2
