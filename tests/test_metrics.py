"""Confusion matrix, metrics, median-frequency weights, and ``segscope evaluate``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _cli import exit_code
from PIL import Image

from segscope import SegNet, save_model
from segscope.errors import SegscopeError
from segscope.metrics import (
    ConfusionMatrix,
    class_pixel_counts,
    confusion_matrix,
    format_metrics,
    median_frequency_weights,
)

# A 2x3 image worked out by hand: (truth, prediction) pairs
# (0,0) (0,1) (1,1) / (1,1) (2,2) (255,0)-ignored
LABEL = torch.tensor([[0, 0, 1], [1, 2, 255]])
PRED = torch.tensor([[0, 1, 1], [1, 2, 0]])


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(PRED, LABEL, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    acc = confusion_matrix(PRED, LABEL, 3, out=cm.clone())  # accumulates
    assert acc.tolist() == [[2, 2, 0], [0, 4, 0], [0, 0, 2]]


def test_metrics_by_hand():
    m = ConfusionMatrix(3, ("background", "road", "markings")).update(PRED, LABEL).metrics()
    assert m["global_accuracy"] == pytest.approx(4 / 5)
    assert m["class_accuracy"] == pytest.approx({"background": 0.5, "road": 1.0, "markings": 1.0})
    assert m["mean_class_accuracy"] == pytest.approx(2.5 / 3)
    # IoU = TP / (TP + FP + FN): background 1/2, road 2/3, markings 1/1
    assert m["iou"] == pytest.approx({"background": 0.5, "road": 2 / 3, "markings": 1.0})
    assert m["miou"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert m["pixels"] == {"background": 2, "road": 2, "markings": 1}
    assert m["predicted_pixels"] == {"background": 1, "road": 3, "markings": 1}
    assert m["total_pixels"] == 5
    text = format_metrics(m)
    assert "72.22" in text and "80.00" in text


def test_update_accepts_scores_and_batches_accumulate():
    cm = ConfusionMatrix(3)
    scores = torch.nn.functional.one_hot(PRED, 3).permute(2, 0, 1)[None].float()
    cm.update(scores, LABEL[None])
    cm.update(PRED[None], LABEL[None])
    assert cm.matrix.tolist() == [[2, 2, 0], [0, 4, 0], [0, 0, 2]]
    other = ConfusionMatrix(3).update(PRED, LABEL)
    cm += other
    assert cm.matrix[1, 1] == 6
    cm.all_reduce()  # no process group: unchanged
    assert cm.matrix[1, 1] == 6


def test_absent_class_is_left_out_of_the_means():
    label = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 1, 1, 1])
    m = ConfusionMatrix(3).update(pred, label).metrics()
    assert m["iou"]["class2"] is None and m["class_accuracy"]["class2"] is None
    assert m["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["mean_class_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    json.dumps(m)  # None, not NaN: valid JSON


def test_confusion_matrix_rejects_bad_ids():
    with pytest.raises(SegscopeError):
        confusion_matrix(torch.tensor([0, 3]), torch.tensor([0, 1]), 3)
    with pytest.raises(SegscopeError):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 7]), 3)
    with pytest.raises(SegscopeError):
        confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1, 1]), 3)


def test_median_frequency_weights_by_hand():
    # image A: 6 background, 2 road; image B: 2 background, 4 road, 2 markings.
    # freq = class pixels / pixels of images holding the class:
    #   background 8/16, road 6/16, markings 2/8; median 6/16
    counts = torch.tensor([[6, 2, 0], [2, 4, 2]])
    w = median_frequency_weights(counts)
    assert w.tolist() == pytest.approx([0.375 / 0.5, 1.0, 0.375 / 0.25])
    a = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1]])
    b = torch.tensor([[0, 1, 1, 255], [2, 2, 1, 1]])  # 255 is not a pixel of any class
    stacked = torch.stack([class_pixel_counts(a, 3), class_pixel_counts(b, 3)])
    assert stacked.tolist() == [[6, 2, 0], [1, 4, 2]]
    # b has 7 labelled pixels: background 7/15, road 6/15, markings 2/7
    freq = np.array([7 / 15, 6 / 15, 2 / 7])
    assert median_frequency_weights(stacked).tolist() == pytest.approx(
        (np.median(freq) / freq).tolist())


def test_median_frequency_weights_absent_class_gets_one():
    w = median_frequency_weights(np.array([[3, 1, 0]]))
    # freq 3/4 and 1/4, median 1/2 (over the classes that occur)
    assert w.tolist() == pytest.approx([0.5 / 0.75, 0.5 / 0.25, 1.0])


# -- segscope evaluate -------------------------------------------------------------------
def camvid_folder(root, n=3, size=(32, 48), seed=0):
    """A CamVid-layout folder: 11-class ids (3 road, 0 sky, 11 unlabelled)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(n):
            img = (rng.random((*size, 3)) * 255).astype(np.uint8)
            lab = np.zeros(size, np.uint8)
            lab[size[0] // 2:] = 3
            lab[: size[0] // 2, : size[1] // 3] = 1
            lab[0, :4] = 11
            img[lab == 3] //= 3
            Image.fromarray(img).save(root / split / f"f{i}.png")
            Image.fromarray(lab).save(root / f"{split}annot" / f"f{i}.png")
    return root


@pytest.fixture
def tiny_checkpoint(tiny_segnet, tmp_path):
    return save_model(tiny_segnet, tmp_path / "tiny.safetensors")


def test_evaluate_cli_matches_independent_scoring(tiny_segnet, tiny_checkpoint, tmp_path,
                                                  capsys):
    data = camvid_folder(tmp_path / "camvid")
    args = ["evaluate", "-c", str(tiny_checkpoint), "--data", str(data), "--json", "-q"]
    assert exit_code(args) == 0
    got = json.loads(capsys.readouterr().out)
    # independent: argmax, merge road+markings, count with numpy
    cm = np.zeros((2, 2), np.int64)
    for i in range(3):
        img = np.asarray(Image.open(data / "val" / f"f{i}.png"), np.float32) / 255
        lab = np.asarray(Image.open(data / "valannot" / f"f{i}.png"))
        with torch.no_grad():
            pred = tiny_segnet(torch.from_numpy(img).permute(2, 0, 1)[None])[0].argmax(0)
        pred = (pred.numpy() >= 1).astype(int)
        keep = lab != 11
        truth = (lab == 3).astype(int)
        np.add.at(cm, (truth[keep], pred[keep]), 1)
    assert got["confusion_matrix"] == cm.tolist()
    assert got["scored_on"] == "road surface" and got["images"] == 3
    tp = cm[1, 1]
    assert got["iou"]["road surface"] == pytest.approx(tp / (cm[1].sum() + cm[:, 1].sum() - tp))


def test_evaluate_cli_table_and_out(tiny_checkpoint, tmp_path, capsys):
    data = camvid_folder(tmp_path / "camvid", n=2)
    assert exit_code(["evaluate", "-c", str(tiny_checkpoint), "--data", str(data), "--out",
                str(tmp_path / "ev"), "--limit", "1", "-q"]) == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and "confusion matrix" in text
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["images"] == 1 and saved["total_pixels"] == 32 * 48 - 4


@pytest.mark.parametrize("case", ["missing", "not_a_model", "bad_data", "five_classes"])
def test_evaluate_cli_bad_input(tiny_checkpoint, tmp_path, capsys, case):
    data = camvid_folder(tmp_path / "camvid", n=1)
    ckpt = str(tiny_checkpoint)
    if case == "missing":
        ckpt = str(tmp_path / "nope.safetensors")
    elif case == "not_a_model":
        ckpt = str(data / "val" / "f0.png")
    elif case == "five_classes":
        ckpt = str(save_model(SegNet(num_classes=5, width=0.0625), tmp_path / "k5.safetensors"))
    args = ["evaluate", "-c", ckpt, "--data",
            str(tmp_path / "nowhere") if case == "bad_data" else str(data), "-q"]
    assert exit_code(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segscope: error:")


def test_evaluate_cli_other_width_checkpoint_runs(tmp_path, capsys):
    # a checkpoint carries its own width: it loads and scores, nothing silently mixed
    path = save_model(SegNet(width=0.125), tmp_path / "w.safetensors")
    data = camvid_folder(tmp_path / "camvid", n=1)
    assert exit_code(["evaluate", "-c", str(path), "--data", str(data), "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 1


def test_training_scale_hand_values():
    from segscope.checkpoint import at_training_scale, training_size

    assert training_size({"train_config": {"size": [96, 128]}, "image_size": [1, 2]}) == (96, 128)
    assert training_size({"train_config": {"size": None}, "image_size": [128, 192]}) == (128, 192)
    assert training_size({"image_size": [0, 5]}) is None and training_size({}) is None
    # CamVid 360x480 for a model trained on 128x192: the training width, own aspect
    assert at_training_scale((360, 480), (128, 192)) == (144, 192)
    assert at_training_scale((720, 960), (128, 192)) == (144, 192)
    assert at_training_scale((10, 480), (128, 192)) == (32, 192)  # never below 32
    assert at_training_scale((360, 480), None) is None
    # a dataset: from its first image (a dataset is shown at one size)
    from segscope.checkpoint import dataset_at_training_scale

    data = [(torch.zeros(3, 360, 480), None), (torch.zeros(3, 100, 100), None)]
    assert dataset_at_training_scale(data, (128, 192)) == (144, 192)
    assert dataset_at_training_scale([], (128, 192)) == (128, 192)
    assert dataset_at_training_scale(data, None) is None


def test_evaluate_scores_at_the_training_scale(tiny_segnet, tmp_path, capsys):
    """A checkpoint that records its training size is scored at that width by default;
    --size overrides it."""
    data = camvid_folder(tmp_path / "camvid", n=2, size=(64, 96))
    ckpt = save_model(tiny_segnet, tmp_path / "t.safetensors", image_size=[40, 48])
    assert exit_code(["evaluate", "-c", str(ckpt), "--data", str(data), "--json"]) == 0
    out = capsys.readouterr()
    got = json.loads(out.out)
    assert got["size"] == [32, 48] and got["total_pixels"] <= 2 * 32 * 48
    assert "scored at 32x48, the scale the model was trained on (its width, 48, at this" in out.err
    assert exit_code(["evaluate", "-c", str(ckpt), "--data", str(data), "--json", "-q",
                      "--size", "64x96"]) == 0
    assert json.loads(capsys.readouterr().out)["size"] == [64, 96]
