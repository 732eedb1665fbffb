"""Atomic writes, the relevance colour scale (eq 8.2) and the CLI's error contract."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from segscope._io import atomic_path, write_json
from segscope.viz.cmap import heatmap_rgb, symmetric_limit


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text().strip().startswith("{") and '"a": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_gives_ordinary_file_mode(tmp_path):
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    path = write_json(tmp_path / "x.json", [1])
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~mask)


def test_heatmap_scale_is_symmetric_blue_white_red():
    r = np.array([[-2.0, -1.0, 0.0, 1.0, 2.0]])
    rgb = heatmap_rgb(r)
    assert rgb[0, 0].tolist() == [0, 0, 255]  # -max: blue
    assert rgb[0, 2].tolist() == [255, 255, 255]  # 0: white
    assert rgb[0, 4].tolist() == [255, 0, 0]  # +max: red
    assert rgb[0, 1].tolist() == [128, 128, 255] and rgb[0, 3].tolist() == [255, 128, 128]


def test_global_scale_is_shared_across_maps():
    a, b = np.array([[1.0]]), np.array([[-4.0]])
    limit = symmetric_limit(a, b)
    assert limit == 4.0
    assert heatmap_rgb(a, limit)[0, 0].tolist() == [255, 191, 191]
    assert symmetric_limit(np.zeros((2, 2))) == 1.0


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segscope", *args],
                          capture_output=True, text=True, timeout=120)


def test_cli_help_lists_commands():
    from click.testing import CliRunner

    from segscope.cli import cli

    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("synth", "train", "evaluate", "predict", "explain", "study", "report", "demo"):
        assert f"  {command} " in out.stdout, command
        sub = CliRunner().invoke(cli, [command, "--help"], prog_name="segscope")
        assert sub.exit_code == 0 and "Usage: segscope " + command in sub.output


def test_cli_unknown_command_fails_cleanly():
    out = run_cli("frobnicate")
    assert out.returncode != 0 and "Traceback" not in out.stderr


def test_scores_that_are_not_finite_are_refused(tiny_segnet):
    """argmax over NaN still picks a class: predictions and scores stop instead."""
    import torch

    from segscope.errors import SegscopeError
    from segscope.predict import evaluate_dataset, predict_labels

    image = torch.rand(1, 3, 32, 32)
    assert predict_labels(tiny_segnet, image).shape == (1, 32, 32)
    image[0, 1, 5, 5] = float("nan")
    with pytest.raises(SegscopeError, match="images hold NaN or infinite"):
        predict_labels(tiny_segnet, image)
    with torch.no_grad():
        tiny_segnet.conv1_1.conv.bias[0] = float("inf")
    data = [(torch.rand(3, 32, 32), torch.zeros(32, 32, dtype=torch.int64))]
    with pytest.raises(SegscopeError, match="weights or inputs are not finite"):
        evaluate_dataset(tiny_segnet, data)
