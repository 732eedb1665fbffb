"""``segscope demo``: the output-folder rule, --split, inputs checked before training.

Each case runs only the demo steps it needs (``run_demo(steps=...)``), so nothing trains.
"""

from __future__ import annotations

import json

import pytest
from _cli import run_cli
from test_metrics import camvid_folder

from segscope.demo import DemoOptions, run_demo, step_real
from segscope.errors import SegscopeError


def _scored(ctx) -> None:
    """Stands in for the data/train steps: a tiny untrained model to score."""
    import torch

    import segscope

    torch.manual_seed(0)
    ctx.model = segscope.SegNet(num_classes=3, width=0.0625).eval()


STEPS = [("model", _scored), ("real", step_real)]


def _options(out, **kw) -> DemoOptions:
    return DemoOptions.quick_options(out=str(out), device="cpu", quiet=True, threads=1, **kw)


def test_demo_without_real_never_keeps_old_real_metrics(tmp_path, capsys):
    real = camvid_folder(tmp_path / "camvid", n=2, size=(48, 64))
    out = tmp_path / "demo"
    first = run_demo(_options(out, real=str(real)), steps=STEPS)
    assert first["real"]["images"] == 2 and first["real"]["split"] == "val"
    assert (out / "real_metrics.json").is_file()
    # The same folder again: refused, and nothing of the first run is touched.
    code, _, err = run_cli(["demo", "--quick", "--out", str(out), "-q"], capsys)
    assert code == 2 and "--overwrite" in err and err.count("\n") == 1
    assert (out / "real_metrics.json").is_file()
    # --resume continues the same run (its files stay); another --real is refused.
    again = run_demo(_options(out, real=str(real), resume=True), steps=STEPS)
    assert again["real"]["miou"] == first["real"]["miou"]
    with pytest.raises(SegscopeError, match=r"other settings \(real\)"):
        run_demo(_options(out, resume=True), steps=STEPS)
    # --overwrite replaces the run: no file of the first one is left beside it.
    second = run_demo(_options(out, overwrite=True), steps=STEPS)
    assert second["real"] is None
    assert not (out / "real_metrics.json").exists()
    assert json.loads((out / "summary.json").read_text())["real"] is None


def test_demo_real_split_is_chosen_or_checked_before_any_work(tmp_path, capsys):
    real = camvid_folder(tmp_path / "camvid", n=2, size=(48, 64))
    only_test = tmp_path / "only_test"
    only_test.mkdir()
    for src, dst in (("val", "test"), ("valannot", "testannot")):
        (real / src).rename(only_test / dst)
    out = tmp_path / "demo"
    # A split that is not there: one line, before the output folder is even made.
    code, _, err = run_cli(["demo", "--quick", "--out", str(out), "--real", str(only_test),
                            "--split", "val", "-q"], capsys)
    assert code == 2 and "no split 'val'" in err and "test" in err
    assert not out.exists()
    summary = run_demo(_options(out, real=str(only_test)), steps=STEPS)
    assert summary["real"]["split"] == "test" and summary["real"]["images"] == 2
    code, _, err = run_cli(["demo", "--quick", "--out", str(tmp_path / "d2"), "--split",
                            "test", "-q"], capsys)
    assert code == 2 and "--split needs --real" in err


def test_library_modules_do_not_import_the_cli():
    import subprocess
    import sys

    code = ("import sys, segscope.demo, segscope.study, segscope.report, segscope.analyses, "
            "segscope.training, segscope.data.synth_folder; "
            "bad = sorted(m for m in sys.modules if m.startswith('segscope.cli')); "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-500:]


def test_resume_of_a_finished_demo_leaves_its_training_alone(tmp_path):
    from segscope.demo import step_data, step_train
    from segscope.training import CHECKPOINT

    steps = [("data", step_data), ("train", step_train)]
    out = tmp_path / "demo"
    first = run_demo(_options(out), steps=steps)
    files = ("model.safetensors", CHECKPOINT)
    before = {p: (out / "train" / p).read_bytes() for p in files}
    # resumed (it was refused: the demo did not see its own training run as resumable)
    again = run_demo(_options(out, resume=True), steps=steps)
    assert again["train"]["iterations"] == first["train"]["iterations"]
    assert {p: (out / "train" / p).read_bytes() for p in files} == before


def test_resume_into_another_commands_folder_names_that_command(tmp_path):
    from segscope.outdir import claim_output

    out = claim_output(tmp_path / "st", "study", settings={"class": "road"})
    (out / "report.html").write_text("<html></html>")
    with pytest.raises(SegscopeError, match="output of 'segscope study', not of 'segscope demo'"):
        run_demo(_options(out, resume=True), steps=STEPS)
