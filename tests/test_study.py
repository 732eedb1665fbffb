"""``segscope study`` and ``segscope report`` end to end, on a tiny model and tiny images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import exit_code
from PIL import Image

import segscope
from segscope.data import SyntheticRoads

#: Every top-level key of summary.json (documented in docs/study.md).
SUMMARY_KEYS = {
    "segscope_version", "created", "checkpoint", "model", "settings", "notes", "images",
    "layerwise", "feature_values", "switch_off", "separation", "class_comparison",
    "synthetic_vs_real", "bias", "figures", "tables", "seconds",
}
FIGURES = {
    "images", "overlay", "layerwise", "feature_maps", "feature_values", "all_feature_values",
    "switch_off", "separation", "class_comparison", "profiles", "divergence", "bias",
    "absorbed",
}
TABLES = {"feature_values", "switch_off", "separation", "class_comparison", "divergence",
          "bias", "absorbed"}


def _tiny_model() -> segscope.SegNet:
    torch.manual_seed(0)
    model = segscope.SegNet(num_classes=3, width=0.0625)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.bias.uniform_(-0.05, 0.05)
    return model.eval()


def _camvid_folder(root: Path, n: int = 2) -> Path:
    """A CamVid-layout folder of ``n`` 64x96 pictures (road id 3, building id 1)."""
    (root / "val").mkdir(parents=True)
    (root / "valannot").mkdir()
    data = SyntheticRoads(n, size=(64, 96), seed=7, preset="randomized")
    lines = []
    for i in range(n):
        image, label = data[i]
        ids = np.where(label.numpy() == 0, 1, 3).astype(np.uint8)
        rgb = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(rgb).save(root / "val" / f"f{i}.png")
        Image.fromarray(ids).save(root / "valannot" / f"f{i}.png")
        lines.append(f"val/f{i}.png valannot/f{i}.png")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    ckpt = segscope.save_model(_tiny_model(), tmp / "model.safetensors")
    real = _camvid_folder(tmp / "camvid")
    out = tmp / "out"
    assert exit_code(["study", "--checkpoint", str(ckpt), "--synthetic", "synthetic:2:narrow:1",
                       "--real", str(real), "--size", "64x96", "--quick", "--out", str(out),
                       "--device", "cpu", "--quiet"]) == 0
    return out, ckpt, real


def test_study_writes_every_figure_table_and_key(study_dir):
    out, _, _ = study_dir
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS
    assert set(summary["figures"]) == FIGURES
    assert set(summary["tables"]) == TABLES
    for name in [*summary["figures"].values(), *summary["tables"].values()]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in summary["figures"].values():
        with Image.open(out / name) as img:
            assert img.format == "PNG"
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


def test_study_numbers_are_consistent(study_dir):
    out, _, _ = study_dir
    s = json.loads((out / "summary.json").read_text())
    lw = s["layerwise"]
    assert len(lw["totals"]) == 37 and lw["totals"]["conv1_1_D"] == pytest.approx(
        lw["output_total"], rel=1e-4)
    assert lw["pixel_total"] == pytest.approx(lw["totals"]["data"], rel=1e-4)
    shares = s["switch_off"]["pixel_shares"]
    assert 0 < shares["0.5"] <= shares["0.9"] <= shares["0.99"] <= 1
    fv = s["feature_values"]
    assert fv["channels"] == 8  # conv2_1 at width 1/16
    assert fv["top"][0]["fv"] >= fv["top"][-1]["fv"]
    # The feature-value table sums to C in every layer (eq 9.3).
    rows = (out / "feature_values.csv").read_text().splitlines()[1:]
    per_layer: dict[str, list[float]] = {}
    for row in rows:
        layer, _, value, _ = row.split(",")
        per_layer.setdefault(layer, []).append(float(value))
    assert len(per_layer) == 37
    for layer, values in per_layer.items():
        assert sum(values) == pytest.approx(len(values), rel=1e-3), layer
    cmp = s["synthetic_vs_real"]["comparisons"]
    assert {"two synthetic pixels", "synthetic vs real best"} <= set(cmp)
    for c in cmp.values():
        assert 0 <= c["mean_js"] <= 1 and 0 <= c["mean_cosine"] <= 2
        # The output layer conv1_1_D of a single-pixel concept is one neuron of class c:
        # identical profiles, zero divergence.
        assert c["per_layer"]["conv1_1_D"]["js"] == pytest.approx(0, abs=1e-9)
    b = s["bias"]
    assert b["pixels"] == 8 * b["images"]
    assert -1 <= b["spearman"] <= 1
    sep = s["separation"]["ranking"]
    assert len(sep) == 8
    # Feature separation: the per-channel pixel maps add up to the whole explanation.
    assert sum(r["pixel_total"] for r in sep) == pytest.approx(lw["pixel_total"], rel=1e-3)
    assert s["images"]["scanned"] == 2


def test_report_is_self_contained_and_rebuilds(study_dir, capsys):
    out, _, _ = study_dir
    page = (out / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(FIGURES)
    for needle in ("http://", "https://", "<link", "<script", "@import", "url("):
        assert needle not in page, needle
    assert "of the relevance sits in" in page
    original = page
    (out / "report.html").unlink()
    assert exit_code(["report", str(out)]) == 0
    assert (out / "report.html").read_text() == original


def _error_line(capsys, argv) -> str:
    assert exit_code(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("segscope: error: ") and "\n" not in err, err
    return err


def test_bad_input_is_one_line(study_dir, tmp_path, capsys):
    _, ckpt, real = study_dir
    base = ["study", "--checkpoint", str(ckpt), "--synthetic", "synthetic:1:narrow:1",
            "--size", "64x96", "--quick", "--quiet", "--out", str(tmp_path / "o")]
    assert "not found" in _error_line(
        capsys, ["study", "--checkpoint", str(tmp_path / "none.safetensors"),
                 "--out", str(tmp_path / "o")])
    assert "unknown layer 'conv9_9'" in _error_line(capsys, [*base, "--layer", "conv9_9"])
    assert "unknown class" in _error_line(capsys, [*base, "--class", "sky"])
    empty = tmp_path / "empty"
    (empty / "val").mkdir(parents=True)
    (empty / "valannot").mkdir()
    (empty / "val.txt").write_text("")
    assert "no images" in _error_line(capsys, [*base, "--real", str(empty)])
    assert "not a study folder" in _error_line(capsys, ["report", str(tmp_path)])


def test_no_true_positives_is_a_clear_error(tmp_path, capsys):
    model = _tiny_model()
    with torch.no_grad():  # the last layer always says "background"
        model.conv1_1_D.weight.zero_()
        model.conv1_1_D.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    ckpt = segscope.save_model(model, tmp_path / "bg.safetensors")
    err = _error_line(capsys, ["study", "--checkpoint", str(ckpt), "--synthetic",
                               "synthetic:2:narrow:1", "--size", "64x96", "--quick",
                               "--quiet", "--out", str(tmp_path / "o")])
    assert "no true positives of class 'road'" in err


def test_demo_step_falls_back_to_a_predicted_class(tmp_path):
    from types import SimpleNamespace

    from segscope.demo import DemoOptions
    from segscope.study import demo_step

    model = _tiny_model()
    with torch.no_grad():  # predicts "background" everywhere: no road true positives
        model.conv1_1_D.weight.mul_(0.01)
        model.conv1_1_D.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    ckpt = segscope.save_model(model, tmp_path / "bg.safetensors")
    ctx = SimpleNamespace(options=DemoOptions.quick_options(out=str(tmp_path), quiet=True),
                          out=tmp_path, summary={"real": None}, model=model, model_path=ckpt,
                          device=torch.device("cpu"), log=lambda message: None)
    demo_step(ctx)
    study = ctx.summary["study"]
    assert study["class"] == "background"
    assert Path(study["report"]).is_file()
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    assert any("no true positives of 'road'" in n for n in summary["notes"])
    # Road and markings have no true positives: the class comparison used their labels.
    assert "labelled pixels" in summary["class_comparison"]["concepts"]["road"]


def test_default_synthetic_data_is_never_training_data():
    from segscope.study import DEFAULT_SYNTHETIC, _default_synthetic

    assert _default_synthetic({}) == DEFAULT_SYNTHETIC
    assert _default_synthetic({"train_config": {"data": "synthetic:2000"}}) == \
        "synthetic:8:narrow:1"
    assert _default_synthetic({"train_config": {"data": "synthetic:50:randomized:5"}}) == \
        "synthetic:8:randomized:6"
    assert _default_synthetic({"train_config": {"data": "/data/x", "val_data":
                                                "synthetic:9:narrow:3"}}) == "synthetic:9:narrow:3"
