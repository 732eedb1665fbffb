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
    "synthetic_vs_real", "bias", "faithfulness", "figures", "tables", "seconds",
}
FIGURES = {
    "images", "overlay", "layerwise", "feature_maps", "feature_values", "all_feature_values",
    "switch_off", "separation", "class_comparison", "profiles", "divergence", "bias",
    "absorbed", "faithfulness",
}
TABLES = {"feature_values", "switch_off", "separation", "class_comparison", "divergence",
          "bias", "absorbed", "faithfulness"}


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


def test_study_faithfulness_section(study_dir):
    from segscope.data import open_dataset
    from segscope.explain import Concept
    from segscope.faithfulness import explain_map
    from segscope.perturbation import perturbation_curves

    out, ckpt, _ = study_dir
    summary = json.loads((out / "summary.json").read_text())
    s = summary["faithfulness"]
    rows = {r["method"]: r for r in s["rows"]}
    assert set(rows) == {"lrp:alpha1beta0", "gradcam", "gradxinput", "random", "edge"}
    assert s["images"] == len(s["per_image"]) >= 1
    for method, row in rows.items():  # the table's mean is the mean over the images
        values = [v[method] for v in s["per_image"].values()]
        assert row["aopc_morf"] == pytest.approx(float(np.mean(values)), rel=1e-6)
    # The synthetic image's edge-map AOPC, recomputed from its own perturbation curve.
    name = summary["images"]["synthetic"]["name"]  # "synthetic:2:narrow:1 #i"
    image, label = open_dataset("synthetic:2:narrow:1", size=(64, 96))[int(name[-1])]
    model, _ = segscope.load_model(ckpt)
    with torch.no_grad():
        tp = (model(image[None])[0].argmax(0) == 1) & (label == 1)
    c = Concept.mask(1, tp)
    cur = perturbation_curves(model, image, c, {"edge": explain_map(model, image, c, "edge")},
                              patch=8, steps=s["steps"], baseline="mean")["edge"]
    assert cur.summary()["aopc_morf"] == pytest.approx(s["per_image"][name]["edge"], rel=1e-5)
    assert "Are the explanations faithful?" in (out / "report.html").read_text()


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
    # CamVid has no markings class: the real images cannot be picked by markings IoU
    assert "has no markings class" in _error_line(
        capsys, [*base, "--real", str(real), "--class", "markings"])
    assert "not a study folder" in _error_line(capsys, ["report", str(tmp_path)])
    # another command's folder with a summary.json of its own
    other = tmp_path / "faith"
    other.mkdir()
    (other / "summary.json").write_text('{"tables": []}')
    (other / ".segscope-run.json").write_text('{"command": "faithfulness"}')
    assert "'segscope faithfulness' made it" in _error_line(capsys, ["report", str(other)])


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

    from segscope.demo import DemoOptions, step_study

    model = _tiny_model()
    with torch.no_grad():  # predicts "background" everywhere: no road true positives
        model.conv1_1_D.weight.mul_(0.01)
        model.conv1_1_D.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    ckpt = segscope.save_model(model, tmp_path / "bg.safetensors")
    ctx = SimpleNamespace(options=DemoOptions.quick_options(out=str(tmp_path), quiet=True),
                          out=tmp_path, summary={"real": None}, data={}, model=model,
                          model_path=ckpt,
                          device=torch.device("cpu"), log=lambda message: None)
    step_study(ctx)
    study = ctx.summary["study"]
    assert study["class"] == "background"
    assert Path(study["report"]).is_file()
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    assert any("no true positives of 'road'" in n for n in summary["notes"])
    # Road and markings have no true positives: the class comparison used their labels.
    assert "labelled pixels" in summary["class_comparison"]["concepts"]["road"]


def test_default_synthetic_data_is_never_training_data():
    from segscope.analyses import DEFAULT_SYNTHETIC, default_synthetic

    assert default_synthetic({}) == DEFAULT_SYNTHETIC
    assert default_synthetic({"train_config": {"data": "synthetic:2000"}}) == \
        "synthetic:8:narrow:1"
    assert default_synthetic({"train_config": {"data": "synthetic:50:randomized:5"}}) == \
        "synthetic:8:randomized:6"
    assert default_synthetic({"train_config": {"data": "/data/x", "val_data":
                                                "synthetic:9:narrow:3"}}) == "synthetic:9:narrow:3"


def test_default_synthetic_data_of_a_model_trained_on_synth_folders(tmp_path):
    from segscope.analyses import default_synthetic

    val = tmp_path / "val"
    val.mkdir()
    (val / "manifest.json").write_text("{}")
    folders = {"data": str(tmp_path / "train"), "val_data": str(val)}
    assert default_synthetic({"train_config": folders}) == str(val.resolve())
    # the validation folder gone: scenes of the preset that made the training folder
    gone = {**folders, "val_data": str(tmp_path / "moved")}
    assert default_synthetic({"train_config": gone, "data": {"preset": "urban", "seed": 4}}) \
        == "synthetic:8:urban:5"


# -- report: what it reads -----------------------------------------------------------------------
@pytest.fixture
def study_copy(study_dir, tmp_path):
    """A copy of the study folder to spoil (without report.html)."""
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(study_dir[0], out)
    (out / "report.html").unlink()
    return out


def _edit_summary(folder: Path, edit) -> None:
    s = json.loads((folder / "summary.json").read_text())
    edit(s)
    (folder / "summary.json").write_text(json.dumps(s))


def test_report_embeds_only_files_inside_its_folder(study_copy, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    (study_copy / "link.png").symlink_to(secret)
    for name in ("../secret.txt", str(secret), "link.png"):
        _edit_summary(study_copy, lambda s, n=name: s["figures"].update(images=n))
        err = _error_line(capsys, ["report", str(study_copy)])
        assert "figures.images" in err and ("inside" in err or "outside" in err), err
        assert not (study_copy / "report.html").exists()


def test_report_refuses_a_truncated_or_foreign_figure(study_copy, capsys):
    png = (study_copy / "bias.png").read_bytes()
    (study_copy / "bias.png").write_bytes(png[: len(png) // 2])
    err = _error_line(capsys, ["report", str(study_copy)])
    assert "figures.bias" in err and "not a readable PNG" in err
    Image.new("RGB", (8, 8)).save(study_copy / "bias.png", format="JPEG")
    assert "not a PNG" in _error_line(capsys, ["report", str(study_copy)])
    assert not (study_copy / "report.html").exists()


@pytest.mark.parametrize("edit, field", [
    (lambda s: s.update(figures=["images.png"]), "figures"),
    (lambda s: s["settings"].update(quick="yes"), "settings.quick"),
    (lambda s: s.update(settings=[1, 2]), "settings"),
    (lambda s: s["model"].update(class_names="road"), "model.class_names"),
    (lambda s: s["layerwise"].update(output_total="big"), "layerwise.output_total"),
    (lambda s: s["switch_off"].pop("pixel_shares"), "'pixel_shares'"),
    (lambda s: s["separation"]["ranking"][0].update(lit_pixels=1.5),
     "separation.ranking[0].lit_pixels"),
    (lambda s: s.pop("bias"), "'bias'"),
])
def test_report_names_a_field_of_the_wrong_type(study_copy, capsys, edit, field):
    _edit_summary(study_copy, edit)
    err = _error_line(capsys, ["report", str(study_copy)])
    assert field in err, err
    assert not (study_copy / "report.html").exists()


def test_report_of_a_missing_figure_says_so(study_copy):
    (study_copy / "divergence.png").unlink()
    from segscope.report import write_report

    page = write_report(study_copy).read_text()
    assert "figure divergence.png is missing from the study folder" in page
    assert page.count('src="data:image/png;base64,') == len(FIGURES) - 1


# -- study: output folder and split -----------------------------------------------------------
def test_study_follows_the_output_folder_rule(study_dir, tmp_path, capsys):
    out, ckpt, _ = study_dir
    base = ["study", "--checkpoint", str(ckpt), "--synthetic", "synthetic:2:narrow:1",
            "--size", "64x96", "--quick", "--quiet", "--device", "cpu"]
    before = sorted(p.name for p in out.iterdir())
    again = _error_line(capsys, [*base, "--out", str(out)])
    assert "--overwrite" in again and "--resume" not in again  # study has no --resume
    # A bad input is refused before the folder is touched, even with --overwrite.
    assert "unknown layer" in _error_line(capsys, [*base, "--out", str(out), "--overwrite",
                                                    "--layer", "conv9_9"])
    assert sorted(p.name for p in out.iterdir()) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert "not empty" in _error_line(capsys, [*base, "--out", str(mine), "--overwrite"])
    assert (mine / "notes.txt").read_text() == "mine"


def test_study_real_split_is_checked_and_chosen(study_dir, tmp_path, capsys):
    from segscope.analyses import StudyContext, StudySettings

    _, ckpt, real = study_dir
    only_test = tmp_path / "camvid_test"
    only_test.mkdir()
    for src, dst in (("val", "test"), ("valannot", "testannot")):
        (only_test / dst).symlink_to(real / src, target_is_directory=True)
    (only_test / "test.txt").write_text((real / "val.txt").read_text().replace("val", "test"))
    settings = StudySettings(quick=True, size=(64, 96), candidates=1)
    ctx = StudyContext.build(ckpt, tmp_path / "o", settings=settings,
                             synthetic="synthetic:2:narrow:1", real=only_test)
    assert ctx.split == "test" and len(ctx.real_samples) == 2
    assert any("only the split 'test'" in n for n in ctx.notes)
    ctx = StudyContext.build(ckpt, tmp_path / "o", settings=settings,
                             synthetic="synthetic:2:narrow:1", real=real)
    assert ctx.split == "val" and not any("split" in n for n in ctx.notes)
    base = ["study", "--checkpoint", str(ckpt), "--synthetic", "synthetic:2:narrow:1",
            "--size", "64x96", "--quick", "--quiet", "--out", str(tmp_path / "o2")]
    err = _error_line(capsys, [*base, "--real", str(only_test), "--split", "val"])
    assert "no split 'val'" in err and "test" in err
    assert "--split needs --real" in _error_line(capsys, [*base, "--split", "test"])
    assert "unknown LRP rule" in _error_line(capsys, [*base, "--rule", "nonsense"])
    assert not (tmp_path / "o2").exists()  # every input is checked before the folder


def test_section_data_round_trips_through_summary_json(study_dir):
    from segscope._typed import from_json, to_json
    from segscope.analyses import REGISTRY

    out, _, _ = study_dir
    summary = json.loads((out / "summary.json").read_text())
    for a in REGISTRY:
        data = from_json(a.data, summary[a.key], a.key)
        assert isinstance(data, a.data)
        assert json.loads(json.dumps(to_json(data))) == summary[a.key], a.key


def test_study_takes_a_per_layer_rule_as_text(study_dir, tmp_path, capsys):
    from segscope.analyses import StudyContext, StudySettings
    from segscope.explain import Concept, lrp

    _, ckpt, _ = study_dir
    text = "conv1_1=zbox,default=alpha1beta0"
    ctx = StudyContext.build(ckpt, tmp_path / "o", synthetic="synthetic:2:narrow:1",
                             settings=StudySettings(quick=True, size=(64, 96), rule=text))
    main = ctx.main()
    concept = Concept.mask(ctx.cls, ctx.true_positives, assign="score")
    as_dict = lrp(ctx.model, ctx.synthetic.image, concept,
                  rule={"conv1_1": "zbox", "default": "alpha1beta0"})
    plain = lrp(ctx.model, ctx.synthetic.image, concept, rule="alpha1beta0")
    assert torch.allclose(main.pixels, as_dict.pixels, rtol=1e-5, atol=1e-8)
    assert not torch.allclose(main.pixels, plain.pixels, rtol=1e-3, atol=1e-6)
    err = _error_line(capsys, ["study", "--checkpoint", str(ckpt), "--synthetic",
                               "synthetic:1:narrow:1", "--size", "64x96", "--quick", "--quiet",
                               "--rule", "conv9_9=zbox", "--out", str(tmp_path / "o")])
    assert "conv9_9" in err
    assert not (tmp_path / "o").exists()
