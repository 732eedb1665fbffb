"""``segscope ablate``: settings, a resumable run of tiny trainings, results and errors."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from segscope.ablate import AblationConfig, ablation_settings, parse_setting, run_ablation
from segscope.checkpoint import load_model
from segscope.errors import SegscopeError
from tests._cli import run_cli, torchrun

TINY = dict(n=8, size=(32, 48), width=0.0625, iters=4, batch_size=2, checkpoint_every=2,
            device="cpu", quiet=True, real_split=None, diagnose=False)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A small labelled set standing in for the real one (a synth folder of another seed)."""
    out = tmp_path_factory.mktemp("real") / "r"
    from segscope.cli.synth import write_dataset
    from segscope.data.synthetic import SyntheticRoads

    write_dataset(SyntheticRoads(3, size=(32, 48), seed=7, preset="urban"), out)
    return out


def test_settings_all_on_then_each_factor_then_the_users(tmp_path):
    own = tmp_path / "mine"
    own.mkdir()
    s = ablation_settings(AblationConfig(real="x", preset="urban", factors=["shadows", "jpeg"],
                                         settings=[f"own={own}", "plain=surface=fixed,noise=off"]))
    assert [x.name for x in s] == ["all_on", "no_shadows", "no_jpeg", "own", "plain"]
    assert s[1].factors == {"shadows": "off"} and s[3].folder == str(own)
    assert s[4].factors == {"surface": "fixed", "noise": "off"}
    # default: every factor the preset randomises, except the layout
    default = ablation_settings(AblationConfig(real="x", preset="narrow"))
    assert [x.name for x in default] == ["all_on", "no_geometry", "no_buildings",
                                         "no_vehicles", "no_trees"]


@pytest.mark.parametrize("text, message", [
    ("bad", "NAME=FACTOR=MODE"),
    ("x=shadow=off", "neither FACTOR=MODE nor a folder"),
    ("x=shadows=maybe", "bad mode 'maybe'"),
    ("a b=shadows=off", "may hold only"),
])
def test_bad_settings_are_one_line_errors(text, message):
    with pytest.raises(SegscopeError, match=message):
        parse_setting(text)


def test_missing_real_set_is_refused_before_any_training(tmp_path, capsys):
    code, _, err = run_cli(["ablate", "--real", str(tmp_path / "nope"), "--out",
                            str(tmp_path / "a"), "--iters", "2"], capsys)
    assert code == 2 and "real dataset not found" in err and err.count("\n") == 1
    assert not (tmp_path / "a" / "runs").exists()
    code, _, err = run_cli(["ablate", "--real", str(tmp_path), "--factors", "shadow",
                            "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "unknown factor 'shadow'" in err


def test_settings_that_would_repeat_all_on_are_refused():
    """urban's layout is fixed: a no_layout model was the all-on model again (Δ 0)."""
    with pytest.raises(SegscopeError, match="'layout' is already fixed in preset 'urban'"):
        ablation_settings(AblationConfig(real="x", preset="urban", factors=["layout"]))
    with pytest.raises(SegscopeError, match="'noise' is already fixed in preset 'narrow'"):
        ablation_settings(AblationConfig(real="x", preset="narrow", factors=["noise"],
                                         factor_mode="fixed"))
    # off is not fixed where switching off removes something (narrow's fixed kerbs)
    s = ablation_settings(AblationConfig(real="x", preset="narrow", factors=["sidewalks"]))
    assert [x.name for x in s] == ["all_on", "no_sidewalks"]


def test_empty_factor_list_is_refused(tmp_path, real, capsys):
    code, _, err = run_cli(["ablate", "--real", str(real), "--factors", " , ", "--out",
                            str(tmp_path / "a")], capsys)
    assert code == 2 and "--factors names no factor" in err and err.count("\n") == 1
    assert not (tmp_path / "a").exists()


def test_split_none_on_a_dataset_with_splits_is_refused(tmp_path, camvid_root, capsys):
    """--split none (for folders without splits) scored CamVid's val split silently."""
    code, _, err = run_cli(["ablate", "--real", str(camvid_root), "--split", "none",
                            "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "--split none is for a folder without splits" in err, err
    assert not (tmp_path / "b").exists()


def test_bad_training_settings_are_refused_before_the_folder_is_made(tmp_path, real,
                                                                     capsys):
    for option, value, message in (("--lr", "nan", "lr = nan is not a finite number"),
                                   ("--width", "0", "width must be in (0, 4]")):
        out = tmp_path / f"a{option}"
        code, _, err = run_cli(["ablate", "--real", str(real), "--factors", "shadows",
                                option, value, "--out", str(out)], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not out.exists()  # the corrected command can use the same --out


def test_a_bad_setting_folder_is_refused_before_the_folder_is_made(tmp_path, real, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "a"
    code, _, err = run_cli(["ablate", "--real", str(real), "--factors", "none", "--setting",
                            f"mine={empty}", "--out", str(out)], capsys)
    assert code == 2 and f"cannot tell which dataset {empty} holds" in err, err
    assert err.count("\n") == 1
    assert not out.exists()  # the corrected command can use the same --out


def _weights(path):
    return load_model(path)[0].state_dict()


def test_an_interrupted_ablation_resumes_and_ends_as_an_uninterrupted_one(tmp_path, real):
    base = dict(TINY, real=str(real), preset="urban", factors=["shadows"])
    whole = run_ablation(AblationConfig(out=str(tmp_path / "whole"),
                                        **{**base, "diagnose": True, "diagnose_synthetic": 3}))
    rows = {r["setting"]: r for r in whole["rows"]}
    for r in rows.values():  # the diagnose fingerprint of every model (or why not)
        fp = r["fingerprint"]
        assert fp["available"] or fp["note"].startswith("diagnose skipped"), fp
        if fp["available"]:
            assert (tmp_path / "whole" / fp["report"]).is_file()
            assert fp["report"] in (tmp_path / "whole" / "report.html").read_text()
    assert set(rows) == {"all_on", "no_shadows"}
    assert 0.0 <= rows["all_on"]["road_surface_iou"] <= 1.0
    assert rows["all_on"]["delta_to_all_on"] == 0.0
    assert rows["no_shadows"]["delta_to_all_on"] == pytest.approx(
        rows["no_shadows"]["road_surface_iou"] - rows["all_on"]["road_surface_iou"])

    out = tmp_path / "cut"
    # killed inside the second training, after 2 of its 4 iterations
    with pytest.raises(KeyboardInterrupt):
        run_ablation(AblationConfig(out=str(out), stop_after_iters=2, **base))
    assert not (out / "runs" / "all_on" / "model.safetensors").exists()
    with pytest.raises(SegscopeError, match="--resume"):
        run_ablation(AblationConfig(out=str(out), **base))
    # continue: first setting finishes, then stop between settings
    with pytest.raises(KeyboardInterrupt):
        run_ablation(AblationConfig(out=str(out), resume=True, stop_after_settings=1, **base))
    first = out / "runs" / "all_on" / "model.safetensors"
    stamp = first.stat().st_mtime_ns
    done = run_ablation(AblationConfig(out=str(out), resume=True, **base))
    assert first.stat().st_mtime_ns == stamp  # kept, not retrained
    for name in ("all_on", "no_shadows"):
        a = _weights(tmp_path / "whole" / "runs" / name / "model.safetensors")
        b = _weights(out / "runs" / name / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert [r["road_surface_iou"] for r in done["rows"]] == \
        [r["road_surface_iou"] for r in whole["rows"]]
    table = list(csv.DictReader((out / "ablation.csv").open()))
    assert [r["setting"] for r in table] == ["all_on", "no_shadows"]
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "no_shadows" in page
    assert 'src="ablation' not in page
    meta = load_model(first)[1]
    data = meta.get("data")
    assert data is not None and data["preset"] == "urban" and data["factors"]["shadows"] == "on"
    # other settings on resume are refused
    with pytest.raises(SegscopeError, match="other settings"):
        run_ablation(AblationConfig(out=str(out), resume=True, **{**base, "iters": 5}))
    json.loads((out / "ablation.json").read_text())


@pytest.mark.slow
def test_torchrun_two_processes_give_the_one_process_results(tmp_path, real):
    """Under torchrun each setting's diagnose shared its chunks with the other process's
    setting (two models' fingerprints mixed, identical images.csv for both) and, with an
    odd number of settings, waited for ever at a collective the other process never
    joined. Three settings on two processes: the results of one process."""
    import os
    import subprocess
    import sys

    args = ["ablate", "--real", str(real), "--split", "none", "--preset", "urban",
            "--factors", "shadows,vehicles", "--scenes", "8", "--size", "32x48",
            "--real-size", "32x48", "--width", "0.0625", "--iters", "2", "--batch-size", "2",
            "--device", "cpu", "-q"]
    code, stderr = torchrun([*args, "--out", tmp_path / "two"], timeout=240)
    assert code == 0, stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "segscope", *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-2000:]
    settings = ["all_on", "no_shadows", "no_vehicles"]
    for name in settings:
        rows = {}
        for run in ("one", "two"):
            path = tmp_path / run / "runs" / name / "diagnose" / "images.csv"
            rows[run] = list(csv.DictReader(path.open()))
        assert rows["one"] == rows["two"], name
    a = list(csv.DictReader((tmp_path / "one" / "runs" / "all_on" / "diagnose" /
                             "images.csv").open()))
    b = list(csv.DictReader((tmp_path / "one" / "runs" / "no_shadows" / "diagnose" /
                             "images.csv").open()))
    assert [r["failure_score"] for r in a] != [r["failure_score"] for r in b]  # two models
    assert (tmp_path / "two" / "ablation.csv").read_text() == \
        (tmp_path / "one" / "ablation.csv").read_text()
