"""Bad input to every ``segscope`` command: one line ``segscope: error: ...``, non-zero exit.

Each case runs ``segscope.cli.main`` in this process (the commands are the same code as
the console script, without the seconds of a fresh ``import torch``); one case sends a
real SIGINT to a ``python -m segscope train`` subprocess. All cases share one tiny
checkpoint, a tiny synthetic dataset and a handful of crafted files.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import run_cli
from PIL import Image
from safetensors.torch import save_file

import segscope
from segscope.cli import main

H, W = 32, 48
TRAIN = ["--width", "0.0625", "--size", f"{H}x{W}", "--batch-size", "2", "-q"]


def assert_one_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("segscope: error: "), err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])


def _bad_metadata(good: dict) -> dict[str, object]:
    """segscope metadata that is valid JSON of the wrong shape, by case name."""
    def with_model(**changes) -> dict:
        return {**good, "model": {**good["model"], **changes}}

    no_classes = dict(good["model"])
    del no_classes["num_classes"]
    return {
        "list": [good],
        "number": 3,
        "model-is-a-string": {**good, "model": "SegNet"},
        "no-num-classes": {**good, "model": no_classes},
        "width-is-text": with_model(width="wide"),
        "width-negative": with_model(width=-1),
        "width-huge": with_model(width=1e9),
        "classes-a-float": with_model(num_classes=2.5),
        "class-names-wrong": with_model(class_names=[1, 2, 3]),
        "not-a-segnet": with_model(name="UNet"),
        # an edited training scale was ignored: the model was scored at the images' size
        "image-size-zero": {**good, "image_size": [0, 0]},
        "image-size-negative": {**good, "image_size": [-64, 96]},
        "image-size-text": {**good, "image_size": "garbage"},
        "image-size-float": {**good, "image_size": [64.5, 96]},
        "train-size-text": {**good, "train_config": {"size": "big"}},
        "format-from-the-future": {**good, "format": 99},
        "format-text": {**good, "format": "one"},
    }


BAD_METADATA = list(_bad_metadata({"model": {"num_classes": 3, "width": 1}}))


@pytest.fixture(scope="module")
def f(tmp_path_factory) -> dict[str, Path]:
    """Every file the cases need, made once."""
    d = tmp_path_factory.mktemp("cli_errors")
    p: dict[str, Path] = {"dir": d}
    torch.manual_seed(0)
    p["ckpt"] = segscope.save_model(segscope.SegNet(3, width=0.0625), d / "model.safetensors")
    p["wide"] = segscope.save_model(segscope.SegNet(3, width=0.125), d / "wide.safetensors")
    p["five"] = segscope.save_model(segscope.SegNet(5, width=0.0625), d / "five.safetensors")

    rng = np.random.default_rng(0)
    label = np.zeros((H, W), np.uint8)
    label[H // 2:, :] = 1
    label[H // 2:, W // 2 - 2:W // 2 + 2] = 2
    pictures = {
        "image": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
        "label": label,
        "label7": np.where(label == 2, 7, label).astype(np.uint8),
        "small_label": label[H // 2:],
        "empty_mask": np.zeros((H, W), np.uint8),
    }
    for name, arr in pictures.items():
        p[name] = d / f"{name}.png"
        Image.fromarray(arr).save(p[name])
    data = p["image"].read_bytes()
    p["truncated"] = d / "truncated.png"
    p["truncated"].write_bytes(data[: len(data) // 2])
    p["text"] = d / "text.png"
    p["text"].write_text("this is not a picture\n")
    p["a_file"] = d / "a_file"
    p["a_file"].write_text("x")

    p["foreign"] = d / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(p["foreign"]))
    p["garbage"] = d / "garbage.safetensors"
    p["garbage"].write_bytes(b"\x01\x02" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    p["cut"] = d / "cut.safetensors"
    p["cut"].write_bytes(p["ckpt"].read_bytes()[:-1000])
    p["pth"] = d / "model.pth"
    torch.save({"weight": torch.zeros(3)}, p["pth"])

    p["no_images"] = d / "no_images"
    (p["no_images"] / "images").mkdir(parents=True)
    (p["no_images"] / "labels").mkdir()
    p["mismatch"] = d / "mismatch"
    for sub in ("images", "labels"):
        (p["mismatch"] / sub).mkdir(parents=True)
    shutil.copy(p["image"], p["mismatch"] / "images" / "a.png")
    shutil.copy(p["small_label"], p["mismatch"] / "labels" / "a.png")
    p["idmap"] = d / "map.json"
    p["idmap"].write_text('{"0": "background", "1": "road"}')  # no 2: label.png has 2s
    p["fullmap"] = d / "full_map.json"
    p["fullmap"].write_text('{"0": "background", "1": "road", "2": "markings"}')
    p["unmapped"] = d / "unmapped"
    for sub in ("images", "labels"):
        (p["unmapped"] / sub).mkdir(parents=True)
    shutil.copy(p["image"], p["unmapped"] / "images" / "a.png")
    shutil.copy(p["label"], p["unmapped"] / "labels" / "a.png")
    p["empty"] = d / "empty"
    p["empty"].mkdir()
    p["fifo"] = d / "fifo.png"
    os.mkfifo(p["fifo"])
    p["devnull"] = Path(os.devnull)
    p["dangling"] = d / "dangling"
    p["dangling"].symlink_to(d / "nowhere")
    # a folder of the user's own files, and checkpoints with non-finite weights
    p["mine"] = d / "mine"
    p["mine"].mkdir()
    shutil.copy(p["image"], p["mine"] / "a.png")
    (p["mine"] / "a_pred.png").write_bytes(b"the user's own file")
    nan_model = segscope.SegNet(3, width=0.0625)
    with torch.no_grad():
        nan_model.conv2_1.conv.weight[0, 0, 0, 0] = float("nan")
    p["nan"] = segscope.save_model(nan_model, d / "nan.safetensors")
    with torch.no_grad():
        nan_model.conv2_1.conv.weight[0, 0, 0, 0] = float("inf")
    p["inf"] = segscope.save_model(nan_model, d / "inf.safetensors")
    # checkpoints whose metadata is valid JSON of the wrong shape
    from segscope.checkpoint import read_metadata

    good = read_metadata(p["ckpt"])
    tensors = {k: v.contiguous() for k, v in segscope.SegNet(3, width=0.0625).state_dict().items()}
    for name, meta in _bad_metadata(good).items():
        p[f"meta_{name}"] = d / f"meta_{name}.safetensors"
        save_file(tensors, str(p[f"meta_{name}"]), metadata={"segscope": json.dumps(meta)})

    # CamVid-like folders: one split only, two splits but no val, listings that escape
    camvid_label = np.where(label == 2, 3, label * 3).astype(np.uint8)
    for name, splits in (("test_only", ["test"]), ("train_test", ["train", "test"]),
                         ("escape", ["val"]), ("absolute", ["val"])):
        root = p[f"camvid_{name}"] = d / f"camvid_{name}"
        for split in splits:
            (root / split).mkdir(parents=True)
            (root / f"{split}annot").mkdir()
            shutil.copy(p["image"], root / split / "a.png")
            Image.fromarray(camvid_label).save(root / f"{split}annot" / "a.png")
    shutil.copy(p["image"], d / "secret.png")
    (p["camvid_escape"] / "val.txt").write_text("../secret.png ../secret.png\n")
    (p["camvid_absolute"] / "val.txt").write_text(f"{d / 'secret.png'} {d / 'secret.png'}\n")

    # a synthetic dataset and a finished 2-step run for the train/resume cases
    p["synth"] = d / "synth"
    p["run"] = d / "run"
    for args in (["synth", "--out", p["synth"], "--n", "4", "--size", f"{H}x{W}", "-q"],
                 ["train", "--data", p["synth"], "--iters", "2", "--out", p["run"], *TRAIN]):
        main([str(a) for a in args])  # success returns; a failure raises SystemExit
    return p


def _readonly(tmp: Path) -> Path:
    """A folder where nothing can be written (root ignores permission bits)."""
    if os.geteuid() != 0:
        ro = tmp / "readonly"
        ro.mkdir(exist_ok=True)
        ro.chmod(0o555)
        return ro / "out"
    probe = Path("/sys/segscope-cannot-write-here")
    try:
        probe.mkdir()
    except OSError:  # sysfs refuses new folders, also to root
        return probe / "out"
    probe.rmdir()
    pytest.skip("no read-only place to test with as root")


# (case id, argv with {placeholders} from the fixture, words the message must contain)
CASES = [
    # paths that do not exist, or are the wrong kind of thing
    ("image-missing", "explain -c {ckpt} -i {dir}/nope.png --class road --pixel 1,1 --out {dir}/o",
     ["nope.png", "not found"]),
    ("checkpoint-missing", "explain -c {dir}/nope.safetensors -i {image} --class road "
     "--pixel 1,1 --out {dir}/o", ["checkpoint not found"]),
    ("checkpoint-folder", "evaluate -c {dir} --data {synth}", ["is a folder"]),
    ("data-missing", "evaluate -c {ckpt} --data {dir}/nope", ["not found"]),
    ("mask-missing", "explain -c {ckpt} -i {image} --class road --mask {dir}/nope.png "
     "--out {dir}/o", ["nope.png", "not found"]),
    ("label-missing", "explain -c {ckpt} -i {image} --class road --from-prediction tp "
     "--label {dir}/nope.png --out {dir}/o", ["nope.png", "not found"]),
    ("predict-input-missing", "predict -c {ckpt} {dir}/nope.png --out {dir}/o", ["not found"]),
    ("report-missing", "report {dir}/nope", ["not found"]),
    ("resume-nothing", "train --resume --out {empty}", ["no earlier run to continue"]),
    # folders without images, sizes that disagree, ids outside the map
    ("folder-no-images", "evaluate -c {ckpt} --data {no_images} --data-kind folder "
     "--id-map {idmap}", ["no images"]),
    ("predict-folder-no-images", "predict -c {ckpt} {empty} --out {dir}/o", ["no images"]),
    ("unknown-layout", "evaluate -c {ckpt} --data {empty}", ["cannot tell which dataset"]),
    ("image-label-size", "evaluate -c {ckpt} --data {mismatch} --data-kind folder "
     "--id-map {fullmap}", ["32x48", "16x48"]),
    ("label-id-not-in-map", "evaluate -c {ckpt} --data {unmapped} --data-kind folder "
     "--id-map {idmap}", ["id 2", "map"]),
    ("explain-label-size", "explain -c {ckpt} -i {image} --class road --from-prediction tp "
     "--label {small_label} --out {dir}/o", ["16x48", "32x48"]),
    ("mask-size", "explain -c {ckpt} -i {image} --class road --mask {small_label} "
     "--out {dir}/o", ["16x48"]),
    # corrupt files
    ("image-truncated", "explain -c {ckpt} -i {truncated} --class road --pixel 1,1 "
     "--out {dir}/o", ["truncated"]),
    ("image-is-text", "predict -c {ckpt} {text} --out {dir}/o", ["cannot read image"]),
    ("label-is-text", "explain -c {ckpt} -i {image} --class road --from-prediction tp "
     "--label {text} --out {dir}/o", ["cannot read label"]),
    # label ids outside ROAD3
    ("explain-label-7", "explain -c {ckpt} -i {image} --class road --from-prediction tp "
     "--label {label7} --out {dir}/o", ["id 7"]),
    ("study-label-7", "study -c {ckpt} --image {image} --label {label7} --quick -q "
     "--out {dir}/st", ["id 7"]),
    # pixels, masks, classes, layers, methods, rules, presets
    ("pixel-too-far", "explain -c {ckpt} -i {image} --class road --pixel 9999,0 --out {dir}/o",
     ["outside"]),
    ("pixel-negative", "explain -c {ckpt} -i {image} --class road --pixel -1,3 --out {dir}/o",
     ["outside"]),
    ("pixel-not-numbers", "explain -c {ckpt} -i {image} --class road --pixel abc --out {dir}/o",
     ["--pixel"]),
    ("empty-mask", "explain -c {ckpt} -i {image} --class road --mask {empty_mask} "
     "--out {dir}/o", ["no pixels"]),
    ("unknown-class", "explain -c {ckpt} -i {image} --class sky --pixel 1,1 --out {dir}/o",
     ["unknown class 'sky'"]),
    ("class-index", "explain -c {ckpt} -i {image} --class 7 --pixel 1,1 --out {dir}/o",
     ["out of range"]),
    ("study-label-id-not-in-map", "study -c {ckpt} --real {unmapped} --id-map {idmap} "
     "--quick -q --out {dir}/st", ["id 2", "map"]),
    ("study-unknown-class", "study -c {ckpt} --class sky --quick -q --out {dir}/st",
     ["unknown class"]),
    ("unknown-layer", "explain -c {ckpt} -i {image} --class road --pixel 1,1 --method gradcam "
     "--layer conv9_9 --out {dir}/o", ["conv9_9"]),
    ("unknown-keep", "explain -c {ckpt} -i {image} --class road --pixel 1,1 --keep conv9_9 "
     "--out {dir}/o", ["conv9_9"]),
    ("study-unknown-layer", "study -c {ckpt} --layer conv9_9 --quick -q --out {dir}/st",
     ["conv9_9"]),
    ("unknown-method", "explain -c {ckpt} -i {image} --class road --pixel 1,1 --method foo "
     "--out {dir}/o", ["unknown method"]),
    ("option-of-other-method", "explain -c {ckpt} -i {image} --class road --pixel 1,1 "
     "--layer conv4_1 --out {dir}/o", ["--layer", "lrp"]),
    ("unknown-rule", "explain -c {ckpt} -i {image} --class road --pixel 1,1 --rule foo "
     "--out {dir}/o", ["unknown lrp rule"]),
    ("rule-for-unknown-layer", "explain -c {ckpt} -i {image} --class road --pixel 1,1 "
     "--rule conv9_9=zbox --out {dir}/o", ["conv9_9"]),
    ("bad-alpha-beta", "explain -c {ckpt} -i {image} --class road --pixel 1,1 "
     "--rule alpha3beta1 --out {dir}/o", ["alpha - beta = 1"]),
    ("nan-root", "explain -c {ckpt} -i {image} --class road --pixel 1,1 --method gradxinput "
     "--root nan --out {dir}/o", ["finite"]),
    ("unknown-preset", "synth --out {dir}/s --n 2 --preset nope", ["unknown preset"]),
    ("unknown-scene-word", "synth --out {dir}/s --n 2 --set lane_style=zigzag", ["zigzag"]),
    ("scene-out-of-range", "synth --out {dir}/s --n 2 --set fog=-3", ["fog"]),
    ("unknown-choice", "explain -c {ckpt} -i {image} --class road --from-prediction xx "
     "--out {dir}/o", ["--from-prediction"]),
    # sizes and counts
    ("size-zero", "evaluate -c {ckpt} --data {synth} --size 0x5", ["0x5"]),
    ("size-text", "train --data {synth} --iters 1 --size abc --out {dir}/t", ["abc"]),
    ("size-too-large", "evaluate -c {ckpt} --data {synth} --size 100000x100000",
     ["too large", "8192"]),
    ("n-negative", "synth --out {dir}/s --n -1", ["--n"]),
    ("synthetic-spec-negative", "evaluate -c {ckpt} --data synthetic:-1", ["at least 1"]),
    ("batch-size-zero", "evaluate -c {ckpt} --data {synth} --batch-size 0", ["--batch-size"]),
    ("workers-negative", "train --data {synth} --iters 1 --workers -1 --out {dir}/t",
     ["workers"]),
    ("val-every-without-val-data", "train --data {synth} --iters 1 --val-every 1 "
     "--out {dir}/t", ["--val-data"]),
    ("split-of-a-folder", "evaluate -c {ckpt} --data {synth} --split train", ["no splits"]),
    ("int-not-a-number", "train --data {synth} --iters abc --out {dir}/t", ["--iters"]),
    # checkpoints of something else
    ("foreign-safetensors", "evaluate -c {foreign} --data {synth}", ["without segscope"]),
    ("random-bytes", "evaluate -c {garbage} --data {synth}", ["not a segscope checkpoint"]),
    ("truncated-checkpoint", "evaluate -c {cut} --data {synth}", ["not a segscope checkpoint"]),
    ("pth-file", "explain -c {pth} -i {image} --class road --pixel 1,1 --out {dir}/o",
     ["pickle"]),
    ("evaluate-other-classes", "evaluate -c {five} --data {synth}", ["5 classes"]),
    ("pretrained-not-vgg", "train --data {synth} --iters 1 --pretrained {foreign} "
     "--out {dir}/t", ["vgg16"]),
    # environment
    ("unknown-device", "evaluate -c {ckpt} --data {synth} --device tpu", ["unknown device"]),
    ("out-is-a-file", "explain -c {ckpt} -i {image} --class road --pixel 1,1 --out {a_file}",
     ["not a folder"]),
    ("evaluate-out-is-a-file", "evaluate -c {ckpt} --data {synth} --out {a_file}",
     ["not a folder"]),
    ("study-out-is-a-file", "study -c {ckpt} --quick -q --out {a_file}", ["not a folder"]),
    ("train-out-is-a-file", "train --data {synth} --iters 1 --out {a_file}", ["not a folder"]),
    ("train-val-limit-zero", "train --data {synth} --val-data {synth} --val-limit 0 --iters 1 "
     "--out {dir}/t", ["val-limit must be at least 1"]),
    ("report-not-a-study", "report {synth}", ["not a study folder"]),
    # a FIFO or a device is not a regular file (and not "not found")
    ("image-fifo", "explain -c {ckpt} -i {fifo} --class road --pixel 1,1 --out {dir}/o",
     ["fifo.png", "not a regular file"]),
    ("image-devnull", "predict -c {ckpt} {devnull} --out {dir}/o", ["not a regular file"]),
    ("label-fifo", "explain -c {ckpt} -i {image} --class road --from-prediction tp "
     "--label {fifo} --out {dir}/o", ["not a regular file"]),
    ("checkpoint-fifo", "evaluate -c {fifo} --data {synth}", ["not a regular file"]),
    ("checkpoint-devnull", "predict -c {devnull} {image} --out {dir}/o",
     ["not a regular file"]),
    ("id-map-devnull", "evaluate -c {ckpt} --data {unmapped} --data-kind folder "
     "--id-map {devnull}", ["not a regular file"]),
    ("pretrained-devnull", "train --data {synth} --iters 1 --pretrained {devnull} "
     "--out {dir}/t", ["not a regular file"]),
    ("data-devnull", "evaluate -c {ckpt} --data {devnull}", ["not a folder"]),
    # --out: a broken symbolic link, a user's folder, an earlier run, the inputs' folder
    ("train-out-broken-link", "train --data {synth} --iters 1 --out {dangling}",
     ["broken symbolic link"]),
    ("predict-out-broken-link", "predict -c {ckpt} {image} --out {dangling}",
     ["broken symbolic link"]),
    ("evaluate-out-broken-link", "evaluate -c {ckpt} --data {synth} --out {dangling}",
     ["broken symbolic link"]),
    ("predict-into-its-inputs", "predict -c {ckpt} {mine} --out {mine}", ["holds the input"]),
    ("predict-into-users-folder", "predict -c {ckpt} {image} --out {mine}",
     ["not empty", "not made by segscope predict"]),
    ("predict-overwrite-users-folder", "predict -c {ckpt} {image} --out {mine} --overwrite",
     ["not made by segscope predict"]),
    ("evaluate-into-users-folder", "evaluate -c {ckpt} --data {synth} --out {mine}",
     ["not made by segscope evaluate"]),
    ("train-into-finished-run", "train --data {synth} --iters 2 --out {run} " + " ".join(TRAIN),
     ["earlier 'segscope train' run", "--resume", "--overwrite"]),
    ("train-overwrite-users-folder", "train --data {synth} --iters 1 --out {mine} --overwrite",
     ["not made by segscope train"]),
    ("train-out-holds-its-data", "train --data {synth} --iters 1 --out {dir} --overwrite",
     ["holds the input"]),
    ("train-resume-users-folder", "train --resume --out {mine}", ["not made by segscope train"]),
    ("train-resume-and-overwrite", "train --resume --overwrite --out {run}",
     ["exclude each other"]),
    # checkpoints whose weights are not finite
    ("evaluate-nan-weights", "evaluate -c {nan} --data {synth}", ["nan or infinite", "conv2_1"]),
    ("evaluate-inf-weights", "evaluate -c {inf} --data {synth}", ["nan or infinite"]),
    ("predict-nan-weights", "predict -c {nan} {image} --out {dir}/pn", ["nan or infinite"]),
    # splits: a folder with one split, several without val, a split that is not there
    ("split-not-there", "evaluate -c {ckpt} --data {camvid_test_only} --split val",
     ["no split 'val'", "test"]),
    ("no-val-among-splits", "evaluate -c {ckpt} --data {camvid_train_test}",
     ["no 'val' split", "train, test", "--split"]),
    ("train-split-not-there", "train --data {camvid_train_test} --split nope --iters 1 "
     "--out {dir}/t", ["no split 'nope'"]),
    ("split-of-generated-data", "train --data synthetic:4 --split train --iters 1 "
     "--out {dir}/t", ["no splits"]),
    # listings name files under the dataset folder only
    ("listing-escapes-with-dotdot", "evaluate -c {ckpt} --data {camvid_escape}",
     ["points outside"]),
    ("listing-absolute-outside", "evaluate -c {ckpt} --data {camvid_absolute}",
     ["not found under"]),
    ("report-on-a-file", "report {a_file}", ["not a study folder"]),
    ("unknown-command", "nosuch", ["nosuch"]),
]


@pytest.mark.parametrize("argv, needles", [pytest.param(a, n, id=i) for i, a, n in CASES])
def test_bad_input_is_one_line(f, capsys, argv, needles):
    args = [part.format(**f) for part in argv.split()]
    code, _, err = run_cli(args, capsys)
    assert_one_error(code, err, *needles)
    assert code == 2


def test_device_cuda_without_cuda(f, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_cli(["evaluate", "-c", f["ckpt"], "--data", f["synth"],
                            "--device", "cuda"], capsys)
    assert_one_error(code, err, "no CUDA")


@pytest.mark.parametrize("command", ["explain", "predict", "synth", "train", "study",
                                     "evaluate"])
def test_read_only_out(f, capsys, tmp_path, command):
    out = _readonly(tmp_path)
    args = {
        "explain": ["explain", "-c", f["ckpt"], "-i", f["image"], "--class", "road",
                    "--pixel", "1,1", "--out", out],
        "predict": ["predict", "-c", f["ckpt"], f["image"], "--out", out],
        "synth": ["synth", "--out", out, "--n", "1", "--size", f"{H}x{W}"],
        "train": ["train", "--data", f["synth"], "--iters", "1", "--out", out, *TRAIN],
        "study": ["study", "-c", f["ckpt"], "--quick", "-q", "--out", out],
        "evaluate": ["evaluate", "-c", f["ckpt"], "--data", f["synth"], "--out", out],
    }[command]
    code, _, err = run_cli(args, capsys)
    assert_one_error(code, err, "cannot write")
    assert not out.exists()


def test_resume_with_changed_option(f, capsys):
    code, _, err = run_cli(["train", "--resume", "--out", f["run"], "--width", "0.125"], capsys)
    assert_one_error(code, err, "--width 0.125 differs")


def test_error_raised_in_a_dataloader_worker_is_one_line(f, capsys, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(f["synth"], data)
    shutil.copy(f["truncated"], data / "images" / "000002.png")
    code, _, err = run_cli(["evaluate", "-c", f["ckpt"], "--data", data, "--workers", "1",
                            "-q"], capsys)
    assert_one_error(code, err, "000002.png", "truncated")


def test_bare_segscope_prints_help(capsys):
    code, out, err = run_cli([], capsys)
    assert code == 0 and "Usage: segscope" in out and err == ""


def test_sigterm_unwinds_like_ctrl_c_and_leaves_no_temporary_file(tmp_path, capsys):
    """``kill`` / ``timeout`` ended a command where it stood: a file being written stayed
    as a ``.tmp`` beside the results. Now SIGTERM is an interrupt: exit 130, one line,
    nothing half-written, and ``--resume`` finishes the run."""
    out = tmp_path / "scenes"
    args = ["synth", "--out", str(out), "--n", "400", "--size", "96x128", "--preset", "urban",
            "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "segscope", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / "images").is_dir() and len(list((out / "images").iterdir())) >= 5:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert [line for line in err.splitlines() if line.strip()] == ["segscope: interrupted"]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert run_cli([*args, "--resume"], capsys)[0] == 0
    assert len(list((out / "images").glob("*.png"))) == 400


def test_ctrl_c_saves_and_resume_matches_an_uninterrupted_run(f, capsys, tmp_path):
    """A real SIGINT: exit 130 with one line and a checkpoint; ``--resume`` then ends
    with exactly the weights of a run that was never stopped."""
    from safetensors.torch import load_file

    iters = 60
    args = ["train", "--data", f["synth"], "--iters", str(iters), "--log-every", "1", *TRAIN]
    stopped = tmp_path / "stopped"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "segscope", *args, "--out", str(stopped)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = stopped / "metrics.csv"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:  # step 2 done
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert [line for line in err.splitlines() if line.strip()] == ["segscope: interrupted"]
    from segscope.checkpoint import read_metadata

    step = read_metadata(stopped / "checkpoint.safetensors")["step"]
    assert 2 <= step < iters
    assert not (stopped / "model.safetensors").exists()

    code, _, err = run_cli(["train", "--resume", "--out", stopped], capsys)
    assert code == 0, err
    straight = tmp_path / "straight"
    code, _, err = run_cli([*args, "--out", straight], capsys)
    assert code == 0, err
    a = load_file(str(stopped / "model.safetensors"))
    b = load_file(str(straight / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_metadata(stopped / "model.safetensors")["step"] == iters


def _run_copy(f, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(f["run"], run)
    return run


@pytest.mark.parametrize("case", BAD_METADATA)
@pytest.mark.parametrize("command", ["evaluate", "predict", "explain", "resume"])
def test_checkpoint_metadata_of_the_wrong_shape_is_one_line(f, capsys, tmp_path, case,
                                                            command):
    ckpt = f[f"meta_{case}"]
    if command == "resume":
        # the run's own training state beside the broken model description
        from segscope.checkpoint import read_header

        run = _run_copy(f, tmp_path)
        header = read_header(run / "checkpoint.safetensors")
        header["segscope"] = read_header(ckpt)["segscope"]
        save_file(load_file_all(run / "checkpoint.safetensors"),
                  str(run / "checkpoint.safetensors"), metadata=header)
    args = {
        "evaluate": ["evaluate", "-c", ckpt, "--data", f["synth"]],
        "predict": ["predict", "-c", ckpt, f["image"], "--out", tmp_path / "p"],
        "explain": ["explain", "-c", ckpt, "-i", f["image"], "--class", "road", "--pixel",
                    "1,1", "--out", tmp_path / "e"],
        "resume": ["train", "--resume", "--out", tmp_path / "run"],
    }[command]
    code, _, err = run_cli(args, capsys)
    assert_one_error(code, err)
    assert code == 2
    assert ("metadata" in err or "not a SegNet" in err or "newer than this segscope" in err), err


def load_file_all(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_resume_refuses_a_checkpoint_with_nan_weights(f, capsys, tmp_path):
    from segscope.checkpoint import read_header

    run = _run_copy(f, tmp_path)
    path = run / "checkpoint.safetensors"
    header, tensors = read_header(path), load_file_all(path)
    tensors["conv1_1.conv.weight"][0, 0, 0, 0] = float("nan")
    save_file(tensors, str(path), metadata=header)
    code, _, err = run_cli(["train", "--resume", "--out", run], capsys)
    assert_one_error(code, err, "nan or infinite", "conv1_1.conv.weight")
    # the optimizer state is checked too
    tensors = load_file_all(f["run"] / "checkpoint.safetensors")
    momentum = next(k for k in tensors if k.startswith("extra.optim."))
    tensors[momentum].view(-1)[0] = float("inf")
    save_file(tensors, str(path), metadata=header)
    code, _, err = run_cli(["train", "--resume", "--out", run], capsys)
    assert_one_error(code, err, "nan or infinite", "training state")


@pytest.mark.parametrize("model, needles", [
    (segscope.SegNet(3, width=0.125), ["widths differ", "0.125", "0.0625"]),
    (segscope.SegNet(5, width=0.0625), ["5 classes", "trains 3"])])
def test_resume_with_a_checkpoint_of_another_model_says_how_it_differs(f, capsys, tmp_path,
                                                                       model, needles):
    from segscope.checkpoint import read_header, write_model_file

    run = _run_copy(f, tmp_path)
    path = run / "checkpoint.safetensors"
    header = read_header(path)
    extra = {k[len("extra."):]: v for k, v in load_file_all(path).items()
             if k.startswith("extra.")}
    write_model_file(model, path, {"kind": "checkpoint", "step": 2}, extra_tensors=extra,
                     extra_metadata={k: v for k, v in header.items() if k != "segscope"})
    code, _, err = run_cli(["train", "--resume", "--out", run], capsys)
    assert_one_error(code, err, *needles)


def test_full_disk_during_training_is_one_line_and_keeps_the_checkpoint(f, capsys, tmp_path,
                                                                      monkeypatch):
    """Writes fail with ENOSPC from the third checkpoint on: one line naming the kept
    checkpoint; once there is room again, --resume finishes the run."""
    import contextlib

    import segscope._io
    import segscope.checkpoint
    import segscope.training
    from segscope.checkpoint import read_metadata

    real = segscope._io.atomic_path
    written = {"checkpoints": 0}

    @contextlib.contextmanager
    def disk_fills_up(path):
        with real(path) as tmp:
            yield tmp  # the temporary file is written, then the disk is full
            if Path(path).name == "checkpoint.safetensors":
                written["checkpoints"] += 1
                if written["checkpoints"] > 2:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    for module in (segscope._io, segscope.checkpoint, segscope.training):
        monkeypatch.setattr(module, "atomic_path", disk_fills_up)
    out = tmp_path / "run"
    args = ["train", "--data", f["synth"], "--iters", "5", "--checkpoint-every", "1",
            "--out", out, *TRAIN]
    code, _, err = run_cli(args, capsys)
    assert_one_error(code, err, "No space left on device", "checkpoint of step 2 is intact",
                     "--resume")
    assert code == 2
    assert read_metadata(out / "checkpoint.safetensors")["step"] == 2
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    code, _, err = run_cli(["train", "--resume", "--out", out, "-q"], capsys)
    assert code == 0, err
    assert read_metadata(out / "model.safetensors")["step"] == 5


def test_one_split_is_taken_and_named(f, capsys):
    code, out, err = run_cli(["evaluate", "-c", f["ckpt"], "--data", f["camvid_test_only"],
                              "--json"], capsys)
    assert code == 0, err
    assert "only the split 'test': using it" in err
    metrics = json.loads(out)
    assert metrics["split"] == "test" and metrics["images"] == 1


def test_predict_twice_needs_overwrite_and_never_mixes_runs(f, capsys, tmp_path):
    out = tmp_path / "pred"
    args = ["predict", "-c", f["ckpt"], f["image"], "--out", out, "-q"]
    assert run_cli(args, capsys)[0] == 0
    (out / "stale_pred.png").write_bytes(b"from the first run")
    code, _, err = run_cli(args, capsys)
    assert_one_error(code, err, "earlier 'segscope predict' run", "--overwrite")
    assert "--resume" not in err  # predict has none
    assert run_cli([*args, "--overwrite"], capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "image_labels.png", "image_overlay.png", "image_pred.png", "predictions.csv"]
    # the user's own folder is never written into
    assert (f["mine"] / "a_pred.png").read_bytes() == b"the user's own file"


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError(
    "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")])
def test_out_of_memory_is_one_line(f, capsys, monkeypatch, error):
    import segscope.predict

    def too_big(*args, **kwargs):
        raise error

    monkeypatch.setattr(segscope.predict, "evaluate_dataset", too_big)
    code, _, err = run_cli(["evaluate", "-c", f["ckpt"], "--data", f["synth"]], capsys)
    assert_one_error(code, err, "out of memory", "--size")
    assert code == 2


@pytest.mark.parametrize("edit, needle", [
    ({"config": {"width": "wide"}}, "width"),
    ({"config": {"iters": "ten"}}, "iters"),
    ({"config": {"size": 5}}, "size"),
    ({"config": {"lr": None}}, "lr"),
    ({"history": [1, 2]}, "history"),
    ({"step": "2"}, "step"),
    ({"optimizer": {"param_groups": "x"}}, "does not fit"),
    ({"rng": {"numpy": 3}}, "does not fit"),
])
def test_resume_of_an_edited_training_state_is_one_line(f, capsys, tmp_path, edit, needle):
    from segscope.checkpoint import read_header

    run = _run_copy(f, tmp_path)
    path = run / "checkpoint.safetensors"
    header = read_header(path)
    state = json.loads(header["segscope_train_state"])
    for key, value in edit.items():
        state[key] = {**state[key], **value} if isinstance(value, dict) else value
    header["segscope_train_state"] = json.dumps(state)
    save_file(load_file_all(path), str(path), metadata=header)
    code, _, err = run_cli(["train", "--resume", "--out", run], capsys)
    assert_one_error(code, err, needle)
    assert code == 2


def test_evaluate_refuses_the_folder_before_any_note(f, capsys, tmp_path):
    # a model with a training size: evaluate would first note the scale it scores at
    import segscope

    model = segscope.SegNet(width=0.0625)
    ckpt = segscope.save_model(model, tmp_path / "sized.safetensors", image_size=[16, 24])
    code, _, err = run_cli(["evaluate", "-c", str(ckpt), "--data", str(f["synth"]), "--out",
                            str(f["mine"])], capsys)
    assert_one_error(code, err, "not made by segscope evaluate")


@pytest.mark.parametrize("command", ["evaluate", "predict", "train"])
def test_sizes_below_8x8_are_refused_by_every_command(f, capsys, tmp_path, command):
    """synth, diagnose and faithfulness refused sizes under 8x8; evaluate, predict and
    train took 1x1 (evaluate scored it as a perfect segmentation)."""
    args = {"evaluate": ["evaluate", "-c", f["ckpt"], "--data", f["synth"]],
            "predict": ["predict", "-c", f["ckpt"], f["image"], "--out", tmp_path / "p"],
            "train": ["train", "--data", f["synth"], "--iters", "1", "--out", tmp_path / "t"],
            }[command]
    code, _, err = run_cli([*args, "--size", "1x1"], capsys)
    assert_one_error(code, err, "size must be at least 8x8")
    assert code == 2 and not (tmp_path / "p").exists() and not (tmp_path / "t").exists()
