"""Training: exact resume, Ctrl-C, data order, schedules, DDP; ``train``/``predict``/``demo``."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import exit_code, torchrun
from PIL import Image

from segscope import SegNet, load_model, save_model
from segscope.checkpoint import training_size, write_model_file
from segscope.data.classes import ROAD3, ROAD3_COLOURS
from segscope.errors import SegscopeError
from segscope.training import (
    CHECKPOINT,
    STATE,
    STATE_KEY,
    ResumableSampler,
    TrainConfig,
    learning_rate,
    load_training_state,
    save_training_state,
    train,
)


class Scenes(torch.utils.data.Dataset):
    """Tiny deterministic road-like scenes: dark road below, a bright stripe on it."""

    has_markings = True

    def __init__(self, n: int, size=(32, 48), offset: int = 0, interrupt_at: int | None = None):
        self.n, self.size, self.offset, self.interrupt_at = n, size, offset, interrupt_at
        self.fetched = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        self.fetched += 1
        if self.interrupt_at is not None and self.fetched == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, mid-epoch
        h, w = self.size
        g = torch.Generator().manual_seed(1000 * self.offset + i)
        image = torch.rand(3, h, w, generator=g) * 0.3 + 0.5
        label = torch.zeros(h, w, dtype=torch.int64)
        top = h // 3 + int(torch.randint(0, h // 4, (1,), generator=g))
        label[top:] = 1
        c = int(torch.randint(w // 4, 3 * w // 4, (1,), generator=g))
        label[top:, c - 1:c + 2] = 2
        image[:, label == 1] *= 0.3
        image[:, label == 2] = 0.95
        label[0, 0] = 255
        return image, label


def config(out: Path, **kw) -> TrainConfig:
    base = dict(data=Scenes(10), val_data=Scenes(3, offset=1), out=str(out), width=0.0625,
                iters=7, batch_size=2, val_every=3, log_every=2, quiet=True, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_model(path)[0].state_dict()


def _history(out: Path) -> list[dict]:
    rows = json.loads((out / "metrics.json").read_text())
    for r in rows:
        r.pop("seconds")
    return rows


def assert_same_run(a: Path, b: Path) -> None:
    wa, wb = _weights(a / "model.safetensors"), _weights(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key  # bit for bit
    assert _history(a) == _history(b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, one per optimizer set-up."""
    root = tmp_path_factory.mktemp("reference")
    runs = {}
    for name, kw in {"sgd": {}, "adam": dict(optimizer="adam", schedule="cosine", warmup=2,
                                              lr=3e-3)}.items():
        result = train(config(root / name, **kw))
        assert result.step == 7 and not result.interrupted
        runs[name] = (root / name, kw)
    return runs


@pytest.mark.parametrize("name,stop", [("sgd", 3), ("adam", 5)])
def test_resume_is_bit_exact(reference, tmp_path, name, stop):
    # 10 images, batch 2: 5 steps per epoch; stop mid-epoch (3) or on its boundary (5)
    ref, kw = reference[name]
    first = train(config(tmp_path, stop_after=stop, **kw))
    assert first.interrupted and first.step == stop and first.model_path is None
    assert not (tmp_path / "model.safetensors").exists()
    assert load_model(tmp_path / CHECKPOINT)[1]["step"] == stop
    resumed = train(TrainConfig(data=Scenes(10), val_data=Scenes(3, offset=1), out=str(tmp_path),
                                resume=True, quiet=True))
    assert resumed.step == 7 and not resumed.interrupted
    assert_same_run(ref, tmp_path)


def test_api_resume_refuses_a_setting_that_differs_and_takes_the_same_ones(reference, tmp_path):
    """``train(TrainConfig(resume=True, loss=...))`` used to take the saved config silently:
    a setting given (not at its default) that differs from the interrupted run is an error;
    the same settings given again resume as usual."""
    ref, kw = reference["sgd"]
    train(config(tmp_path, stop_after=3, **kw))
    before = (tmp_path / CHECKPOINT).read_bytes()
    for change in (dict(loss="ce+dice"), dict(iters=9), dict(width=0.125), dict(size=(8, 8))):
        with pytest.raises(SegscopeError, match=f"{next(iter(change))}=.* differs from the "
                                                "interrupted run"):
            train(TrainConfig(data=Scenes(10), out=str(tmp_path), resume=True, quiet=True,
                              **change))
        assert (tmp_path / CHECKPOINT).read_bytes() == before
    resumed = train(config(tmp_path, resume=True, **kw))  # every setting as saved
    assert resumed.step == 7
    assert_same_run(ref, tmp_path)


def test_training_changes_the_model_and_learns_something(reference):
    out, _ = reference["adam"]
    rows = _history(out)
    losses = [r["loss"] for r in rows]
    assert losses[-1] < losses[0]
    assert {r["step"] for r in rows} == {2, 3, 4, 6, 7}  # log_every 2, val_every 3, end
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["optimizer"] == "adam" and len(cfg["class_weights"]) == 3
    # markings are rare -> the largest median-frequency weight
    assert cfg["class_weights"][2] == max(cfg["class_weights"])
    for f in ("model.safetensors", "best.safetensors", "metrics.csv", "curves.png"):
        assert (out / f).stat().st_size > 0
    csv = (out / "metrics.csv").read_text().splitlines()
    assert csv[0].startswith("step,epoch,lr,loss") and "val_iou_markings" in csv[0]
    assert len(csv) == 6


def test_ctrl_c_saves_a_checkpoint_and_resume_is_exact(reference, tmp_path):
    ref, _ = reference["sgd"]
    cfg = config(tmp_path, data=Scenes(10, interrupt_at=19))  # 10 fetches: weights; 19: batch 5
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    step = load_model(tmp_path / CHECKPOINT)[1]["step"]
    assert step == 5  # the step in flight finishes, then the checkpoint is written
    train(TrainConfig(data=Scenes(10), val_data=Scenes(3, offset=1), out=str(tmp_path),
                      resume=True, quiet=True))
    assert_same_run(ref, tmp_path)


def test_resume_needs_a_checkpoint_of_this_run(reference, tmp_path):
    with pytest.raises(SegscopeError, match="holds no earlier run"):
        train(config(tmp_path, resume=True))
    ref, _ = reference["sgd"]
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    # the checkpoint of a wider network, with this run's training state
    header, state = load_training_state(run)
    wide = SegNet(3, width=0.125)
    write_model_file(wide, run / CHECKPOINT, {"kind": "checkpoint", "step": header["step"]},
                     extra_tensors=state, extra_metadata={STATE_KEY: json.dumps(header)})
    with pytest.raises(SegscopeError, match="widths differ"):
        train(config(run, resume=True))
    # a plain model file holds no training state
    save_model(load_model(ref / "model.safetensors")[0], run / CHECKPOINT, step=7)
    with pytest.raises(SegscopeError, match="no training state"):
        train(config(run, resume=True))


def test_resume_reads_the_two_file_checkpoint_of_earlier_versions(reference, tmp_path):
    """Before the single file, the state lived in checkpoint.state.safetensors."""
    from safetensors.torch import save_file

    ref, _ = reference["sgd"]
    run = tmp_path / "run"
    first = train(config(run, stop_after=3))
    header, state = load_training_state(run)
    save_model(load_model(run / CHECKPOINT)[0], run / CHECKPOINT, kind="checkpoint", step=3)
    save_file(state, str(run / STATE), metadata={STATE_KEY: json.dumps(header)})
    (run / ".segscope-run.json").unlink()  # those versions did not mark their folders
    assert first.step == 3
    train(TrainConfig(data=Scenes(10), val_data=Scenes(3, offset=1), out=str(run),
                      resume=True, quiet=True))
    assert_same_run(ref, run)
    # a pair split by a kill in the old writer: said in one line
    save_model(load_model(ref / "model.safetensors")[0], run / CHECKPOINT, step=2)
    with pytest.raises(SegscopeError, match="different steps"):
        train(config(run, resume=True))


def test_sampler_order_depends_on_seed_and_epoch_only():
    data = list(range(11))
    a = ResumableSampler(data, seed=5)
    a.set_epoch(2)
    full = list(a)
    assert sorted(full) == data
    b = ResumableSampler(data, seed=5)
    b.set_epoch(2)
    b.start = 4
    assert list(b) == full[4:] and len(b) == 7
    a.set_epoch(3)
    assert list(a) != full
    shards = []
    for rank in range(2):
        s = ResumableSampler(data, num_replicas=2, rank=rank, seed=5)
        s.set_epoch(2)
        shards.append(list(s))
    assert set(shards[0]) | set(shards[1]) == set(data)  # 12 slots: one image repeated
    assert len(shards[0]) == len(shards[1]) == 6


def test_learning_rate_schedules():
    c = TrainConfig(lr=0.1, schedule="cosine", warmup=4)
    assert [learning_rate(c, s, 104) for s in range(4)] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert learning_rate(c, 54, 104) == pytest.approx(0.05)
    assert learning_rate(c, 104, 104) == pytest.approx(0.0)
    c = TrainConfig(lr=0.1, schedule="poly")
    assert learning_rate(c, 50, 100) == pytest.approx(0.1 * 0.5 ** 0.9)
    assert learning_rate(TrainConfig(lr=0.1), 99, 100) == 0.1


def test_optimizer_state_round_trips_without_pickle(tmp_path):
    from segscope.training import _optimizer_from_flat, make_optimizer

    model = SegNet(width=0.0625)
    opt = make_optimizer(model.parameters(), TrainConfig(optimizer="adam"))
    model(torch.rand(1, 3, 32, 32)).sum().backward()
    opt.step()
    save_training_state(tmp_path, model, opt, {
        "step": 1, "epoch": 0, "batch_in_epoch": 1, "history": [], "config": {"width": 0.0625},
        "class_weights": [1.0, 2.0, 3.0], "loss_count": 0, "loss_sum": 0.0, "seconds": 0.5})
    header, tensors = load_training_state(tmp_path)
    fresh = make_optimizer(model.parameters(), TrainConfig(optimizer="adam"))
    _optimizer_from_flat(fresh, tensors, header["optimizer"])
    for p in model.parameters():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(fresh.state[p][key], opt.state[p][key])


def test_bad_configs():
    for kw, match in [(dict(iters=None), "--iters"), (dict(iters=2, epochs=1), "either"),
                      (dict(iters=0), "at least 1"), (dict(optimizer="rmsprop"), "optimizer"),
                      (dict(loss="dice"), "unknown loss 'dice'"),
                      (dict(data=Scenes(1)), "fewer than one batch")]:
        with pytest.raises(SegscopeError, match=match):
            train(config(Path("/nonexistent/never-written"), **kw))


# -- command line ------------------------------------------------------------------------
def camvid_folder(root: Path, n: int = 4, size=(32, 48)) -> Path:
    """A CamVid-layout folder (11-class ids: 3 road, 1 building, 11 unlabelled)."""
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(n):
            image, label = Scenes(n, size, offset=7)[i]
            lab = np.where(label.numpy() >= 1, 3, 1).astype(np.uint8)
            lab[0, :3] = 11
            Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(
                root / split / f"s{i}.png")
            Image.fromarray(lab).save(root / f"{split}annot" / f"s{i}.png")
    return root


def test_train_cli_writes_outputs_and_guards_resume(tmp_path, capsys):
    data = camvid_folder(tmp_path / "camvid")
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--val-data", str(data), "--width", "0.0625",
            "--iters", "3", "--batch-size", "2", "--out", str(out), "--quiet", "--seed", "1"]
    assert exit_code(args) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([
        ".segscope-run.json", "model.safetensors", "best.safetensors",
        "checkpoint.safetensors", "metrics.csv", "metrics.json", "curves.png", "config.json"])
    model, meta = load_model(out / "model.safetensors")
    assert meta["step"] == 3 and model.width == 0.0625
    # the size of the training images is recorded (later commands show images at it)
    assert meta["image_size"] == [32, 48] and training_size(meta) == (32, 48)
    # so does the resumable checkpoint, which a later command may be given instead
    _, ckpt_meta = load_model(out / "checkpoint.safetensors")
    assert ckpt_meta["kind"] == "checkpoint" and training_size(ckpt_meta) == (32, 48)
    # CamVid has no markings: validation is on the road surface
    assert set(meta["val_metrics"]["iou"]) == {"background", "road surface"}
    capsys.readouterr()
    assert exit_code(["train", "--resume", "--out", str(out), "--iters", "5", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--iters 5 differs" in err[0]
    assert exit_code(["train", "--resume", "--out", str(tmp_path / "empty"), "-q"]) == 2
    assert "no earlier run to continue" in capsys.readouterr().err
    # the output-folder rule: a finished run is not silently replaced ...
    assert exit_code(args) == 2
    assert "earlier 'segscope train' run" in capsys.readouterr().err
    # ... --overwrite replaces it whole: no best.safetensors of the old run beside the new
    # model (this run has no validation)
    no_val = args[:3] + args[5:] + ["--overwrite"]
    assert "--val-data" not in no_val and "--data" in no_val
    assert exit_code(no_val) == 0
    assert not (out / "best.safetensors").exists()
    assert load_model(out / "model.safetensors")[1]["val_metrics"] is None
    assert exit_code(["train", "--data", "synthetic:4:nosuchpreset", "--iters", "1",
                "--out", str(tmp_path / "x"), "-q"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_train_cli_loss_is_recorded_and_kept_on_resume(tmp_path, capsys):
    data = camvid_folder(tmp_path / "camvid")
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--width", "0.0625", "--iters", "2",
            "--batch-size", "2", "--loss", "ce+dice", "--out", str(out), "-q"]
    assert exit_code(args) == 0
    assert json.loads((out / "config.json").read_text())["loss"] == "ce+dice"
    assert load_model(out / "model.safetensors")[1]["train_config"]["loss"] == "ce+dice"
    capsys.readouterr()
    assert exit_code(["train", "--resume", "--out", str(out), "--loss", "ce", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--loss ce differs" in err[0]


def test_resume_of_a_run_from_before_the_loss_setting(tmp_path, capsys):
    """A run written before ``--loss`` existed trained with cross-entropy: resuming it
    with ``--loss ce`` is the same run, ``--loss ce+dice`` is not."""
    from segscope.checkpoint import read_metadata
    from segscope.training import CHECKPOINT, STATE_KEY, load_training_state

    data = camvid_folder(tmp_path / "camvid")
    out = tmp_path / "run"
    assert exit_code(["train", "--data", str(data), "--width", "0.0625", "--iters", "2",
                      "--batch-size", "2", "--out", str(out), "-q"]) == 0
    header, state = load_training_state(out)
    del header["config"]["loss"]
    meta = {k: v for k, v in read_metadata(out / CHECKPOINT).items()
            if k in ("kind", "step", "image_size")}
    write_model_file(load_model(out / CHECKPOINT)[0], out / CHECKPOINT, meta,
                     extra_tensors=state, extra_metadata={STATE_KEY: json.dumps(header)})
    assert "loss" not in load_training_state(out, tensors=False)[0]["config"]
    capsys.readouterr()
    assert exit_code(["train", "--resume", "--out", str(out), "--loss", "ce", "-q"]) == 0
    assert "differs" not in capsys.readouterr().err
    assert exit_code(["train", "--resume", "--out", str(out), "--loss", "ce+dice", "-q"]) == 2
    assert "--loss ce+dice differs from the interrupted run (ce)" in capsys.readouterr().err


def test_resume_refuses_training_images_that_changed(tmp_path, capsys):
    """A folder rewritten between the interrupt and --resume (other scenes, fewer images)
    was trained on silently; the same images, untouched, resume as before."""
    data = camvid_folder(tmp_path / "camvid")
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--width", "0.0625", "--iters", "4", "--batch-size",
            "2", "--out", str(out), "--quiet"]
    assert exit_code([*args, "--stop-after", "2"]) == 0
    before = (out / CHECKPOINT).read_bytes()
    good = (data / "train" / "s1.png").read_bytes()
    Image.fromarray(np.full((32, 48, 3), 7, np.uint8)).save(data / "train" / "s1.png")
    capsys.readouterr()
    assert exit_code(["train", "--resume", "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not those the interrupted run started on" in err[0]
    assert (out / CHECKPOINT).read_bytes() == before
    (data / "train" / "s1.png").write_bytes(good)
    assert exit_code(["train", "--resume", "--out", str(out), "-q"]) == 0
    assert load_model(out / "model.safetensors")[1]["step"] == 4


def test_resume_with_a_relative_data_path_from_anywhere(tmp_path, monkeypatch, capsys):
    data = camvid_folder(tmp_path / "camvid")
    monkeypatch.chdir(tmp_path)
    args = ["train", "--data", "camvid", "--width", "0.0625", "--iters", "4", "--batch-size",
            "2", "--out", "run", "--quiet", "--seed", "1"]
    assert exit_code([*args, "--stop-after", "2"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"] == str(data.resolve())  # recorded where it is, not as typed
    # the same folder written another way is the same setting ...
    args_abs = [str(data) if a == "camvid" else a for a in args]
    capsys.readouterr()
    assert exit_code([*args_abs, "--lr", "0.5", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.5 differs" in err and "--data" not in err
    # ... and the run resumes from another working directory
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert exit_code(["train", "--out", str(tmp_path / "run"), "--resume", "-q"]) == 0
    assert load_model(tmp_path / "run" / "model.safetensors")[1]["step"] == 4


def test_resume_of_a_finished_run_changes_nothing(tmp_path, capsys):
    data = camvid_folder(tmp_path / "camvid")
    out = tmp_path / "run"
    assert exit_code(["train", "--data", str(data), "--width", "0.0625", "--iters", "2",
                      "--batch-size", "2", "--out", str(out), "-q"]) == 0
    files = sorted(p.name for p in out.iterdir())
    before = {name: (out / name).read_bytes() for name in files}
    assert exit_code(["train", "--resume", "--out", str(out)]) == 0
    assert "finished run (2/2 iterations)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert load_model(out / "model.safetensors")[1]["image_size"] == [32, 48]


def test_a_checkpoint_before_the_first_batch_keeps_the_image_size(tmp_path):
    data = camvid_folder(tmp_path / "camvid")
    out = tmp_path / "run"
    base = ["train", "--data", str(data), "--width", "0.0625", "--iters", "4",
            "--batch-size", "2", "--out", str(out), "-q"]
    assert exit_code([*base, "--stop-after", "1"]) == 0
    # resumed and stopped again at once: the checkpoint is written before any new batch
    assert exit_code(["train", "--resume", "--out", str(out), "-q", "--stop-after", "1"]) == 0
    assert load_model(out / "checkpoint.safetensors")[1]["image_size"] == [32, 48]


def test_train_cli_ctrl_c_exits_130(tmp_path, monkeypatch, capsys):
    import segscope.training

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(segscope.training, "train", interrupted)
    assert exit_code(["train", "--iters", "1", "--out", str(tmp_path), "-q"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_predict_cli(tiny_segnet, tmp_path, capsys):
    ckpt = save_model(tiny_segnet, tmp_path / "m.safetensors")
    data = camvid_folder(tmp_path / "camvid", n=2)
    out = tmp_path / "pred"
    assert exit_code(["predict", "-c", str(ckpt), str(data / "val"), str(data / "train" / "s0.png"),
                "--out", str(out), "-q"]) == 0
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == sorted([f"{s}_{k}.png" for s in ("s0_png", "s1", "s0_png_2")
                            for k in ("pred", "overlay", "labels")] + ["predictions.csv"])
    index = list(csv.DictReader((out / "predictions.csv").open()))
    assert [(Path(r["input"]).relative_to(data).as_posix(), r["labels"]) for r in index] == [
        ("val/s0.png", "s0_png_labels.png"), ("val/s1.png", "s1_labels.png"),
        ("train/s0.png", "s0_png_2_labels.png")]
    assert all(abs(sum(float(r[f"share_{c}"]) for c in ROAD3) - 1) < 1e-5 for r in index)
    image = torch.from_numpy(np.asarray(Image.open(data / "val" / "s1.png"), np.float32) / 255)
    with torch.no_grad():
        expected = tiny_segnet(image.permute(2, 0, 1)[None])[0].argmax(0).numpy()
    labels = np.asarray(Image.open(out / "s1_labels.png"))
    assert np.array_equal(labels, expected)
    colours = np.asarray(Image.open(out / "s1_pred.png"))
    assert np.array_equal(colours, np.asarray(ROAD3_COLOURS, np.uint8)[expected])
    over = np.asarray(Image.open(out / "s1_overlay.png")).astype(float)
    blend = 0.5 * image.numpy() * 255 + 0.5 * colours
    assert np.abs(over - blend).max() <= 1.0
    # bad inputs: one line, exit 2
    (tmp_path / "empty").mkdir()
    for args in (["predict", "-c", str(ckpt), str(tmp_path / "empty"), "--out", str(out)],
                 ["predict", "-c", str(tmp_path / "no.safetensors"), str(data / "val"),
                  "--out", str(out)],
                 ["predict", "-c", str(ckpt), str(tmp_path / "missing.png"), "--out", str(out)]):
        capsys.readouterr()
        assert exit_code(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("segscope: error:")
    # a file that is no picture among good ones: refused before anything is written
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(data / "val" / "s1.png", mixed / "a.png")
    (mixed / "b.png").write_bytes(b"")
    capsys.readouterr()
    assert exit_code(["predict", "-c", str(ckpt), str(mixed), "--out",
                      str(tmp_path / "p2")]) == 2
    assert f"cannot read image {mixed / 'b.png'}" in capsys.readouterr().err
    assert not (tmp_path / "p2").exists()


def test_output_names_never_give_one_image_anothers_name():
    """a.png, a.jpg and a_2.png were named a, a_2 and a_2_2: a_2_labels.png was not the
    prediction of a_2.png."""
    from segscope.predict import output_names

    files = [Path("x/a.png"), Path("x/a.jpg"), Path("x/a_2.png"), Path("y/a.png"),
             Path("y/b.png"), Path("x/a_png_2.png")]
    assert output_names(files) == ["a_png", "a_jpg", "a_2", "a_png_3", "b", "a_png_2"]
    assert output_names([Path("a.png")]) == ["a"]


def test_predict_at_the_training_scale(tiny_segnet, tmp_path):
    """A model trained on 32x48 images sees a 64x96 image at 32x48; the mask is the
    bilinearly upsampled class scores' argmax, at 64x96."""
    import torch.nn.functional as F

    from segscope.data.real import resize_image
    from segscope.predict import load_image, predict_files

    data = camvid_folder(tmp_path / "camvid", n=1, size=(64, 96))
    path = data / "val" / "s0.png"
    predict_files(tiny_segnet, [path], tmp_path / "pred", trained_size=(32, 48), quiet=True)
    image = load_image(path)
    with torch.no_grad():
        scores = tiny_segnet(resize_image(image, (32, 48))[None])
    expected = F.interpolate(scores, size=(64, 96), mode="bilinear",
                             align_corners=False)[0].argmax(0).numpy()
    labels = np.asarray(Image.open(tmp_path / "pred" / "s0_labels.png"))
    assert labels.shape == (64, 96) and np.array_equal(labels, expected)
    # an explicit size wins: the image is resized and predicted as it is
    predict_files(tiny_segnet, [path], tmp_path / "p2", size=(64, 96), trained_size=(32, 48),
                  quiet=True)
    with torch.no_grad():
        plain = tiny_segnet(image[None])[0].argmax(0).numpy()
    assert np.array_equal(np.asarray(Image.open(tmp_path / "p2" / "s0_labels.png")), plain)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("SEGSCOPE_SKIP_DDP") == "1", reason="SEGSCOPE_SKIP_DDP=1")
def test_ddp_two_processes_with_gloo(tmp_path):
    """torchrun, world size 2 on CPU: both ranks train on their shard, rank 0 writes."""
    pytest.importorskip("torch.distributed.run")
    data = camvid_folder(tmp_path / "camvid", n=4)
    out = tmp_path / "ddp"
    args = ["train", "--data", data, "--val-data", data, "--width", "0.0625", "--iters", "2",
            "--batch-size", "1", "--device", "cpu", "--out", out, "--quiet"]
    code, stderr = torchrun(args)
    assert code == 0, stderr[-2000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2
    model, meta = load_model(out / "model.safetensors")
    assert meta["step"] == 2
    # validation summed over both ranks' shards: all 4 images' labelled pixels
    assert meta["val_metrics"]["total_pixels"] == 4 * (32 * 48 - 3)
    # ... of the model that is saved: each rank's last step had moved its own batch-norm
    # statistics, and rank 1 scored its half of the images with those
    from segscope.data import open_dataset
    from segscope.predict import evaluate_dataset

    again = evaluate_dataset(model, open_dataset(str(data), split="val")).metrics()
    assert again["confusion_matrix"] == meta["val_metrics"]["confusion_matrix"]
    assert not list(out.glob(".*.tmp"))
    # the same command again: rank 0 refuses the folder, rank 1 stops with it (no
    # traceback at a barrier rank 0 never reaches), and the user reads the line once
    code, stderr = torchrun(args)
    assert code != 0
    assert stderr.count("segscope: error: ") == 1 and "earlier 'segscope train' run" in stderr
    # (torchrun's own launcher prints a traceback for any failed worker; none from ours)
    assert "segscope/" not in stderr.replace("segscope/cli", ""), stderr[-2000:]
    assert "Connection closed by peer" not in stderr


def test_demo_quick_end_to_end(tmp_path, capsys):
    real = camvid_folder(tmp_path / "camvid", n=3, size=(48, 64))
    out = tmp_path / "demo"
    assert exit_code(["demo", "--quick", "--out", str(out), "--real", str(real), "--device", "cpu",
                "-q"]) == 0
    printed = capsys.readouterr().out
    assert "synthetic val" in printed and "road surface" in printed
    s = json.loads((out / "summary.json").read_text())
    assert s["quick"] is True and s["device"] == "cpu"
    assert {"data", "train", "evaluate", "real", "predictions"} <= set(s["timings"])
    assert all(t >= 0 for t in s["timings"].values())
    assert s["total_seconds"] >= sum(s["timings"].values()) - 0.1
    val = s["synthetic_val"]
    assert set(val["iou"]) == {"background", "road", "markings"}
    for v in [val["global_accuracy"], val["miou"], *val["iou"].values()]:
        assert v is None or 0.0 <= v <= 1.0
    assert set(s["bar"]) == {"road_iou>=0.9", "markings_iou>=0.6"}
    assert s["bar"]["road_iou>=0.9"] == ((val["iou"]["road"] or 0) >= 0.9)
    assert s["real"]["scored_on"] == "road surface" and s["real"]["images"] == 3
    assert set(s["real"]["iou"]) == {"background", "road surface"}
    assert s["real"]["size"] == [72, 96]  # training width 96, CamVid aspect 3:4
    assert s["train"]["iterations"] == 8
    assert (out / "train" / "model.safetensors").is_file()
    assert (out / "train" / "curves.png").is_file()
    assert len(list((out / "predictions").glob("*.png"))) == 4
    assert (out / "synthetic-sample" / "contact_sheet.png").is_file()


def test_demo_bad_input(tmp_path, capsys):
    assert exit_code(["demo", "--quick", "--out", str(tmp_path / "d"), "--real",
                str(tmp_path / "nowhere"), "-q"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    (tmp_path / "file").write_text("x")
    assert exit_code(["demo", "--quick", "--out", str(tmp_path / "file"), "-q"]) == 2


def _kill_config(out: Path, **kw) -> TrainConfig:
    return TrainConfig(data=Scenes(8), out=str(out), width=0.0625, iters=12, batch_size=2,
                       log_every=1, checkpoint_every=1, quiet=True, seed=5, **kw)


def _train_in_child(out: Path, resume: bool) -> int:
    """Fork a process that trains into ``out``; returns its pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            train(_kill_config(out, resume=resume))
        except KeyboardInterrupt:
            code = 130
        except BaseException:  # noqa: BLE001 - reported through the exit status
            import traceback

            (out.parent / f"child-{os.getpid()}.txt").write_text(traceback.format_exc())
            code = 1
        os._exit(code)
    return pid


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kills_at_random_moments_always_resume_bit_exact(tmp_path):
    """SIGKILL 20 times (and a quick double Ctrl-C 6 times) at random moments of a run
    that checkpoints every step: the folder is always resumable, and the run ends with
    the weights and history of one that was never stopped, bit for bit."""
    import random
    import time

    from segscope.outdir import MARKER

    reference = tmp_path / "reference"
    train(_kill_config(reference))
    run = tmp_path / "run"
    rng = random.Random(9)
    kills = ctrl_c = mid_write = 0
    while kills < 20 or ctrl_c < 6:
        double_ctrl_c = ctrl_c < 6 and (kills >= 20 or rng.random() < 0.25)
        pid = _train_in_child(run, resume=(run / MARKER).exists())
        time.sleep(rng.uniform(0.0, 0.4))
        if double_ctrl_c:
            os.kill(pid, signal.SIGINT)
            time.sleep(rng.uniform(0.0, 0.05))
            os.kill(pid, signal.SIGINT)
        else:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        failures = list(tmp_path.glob("child-*.txt"))
        assert not failures, failures[0].read_text()
        if double_ctrl_c:
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) in (0, 130), status
            ctrl_c += 1
        else:
            assert os.WIFSIGNALED(status) or os.WEXITSTATUS(status) == 0, status
            kills += 1
        mid_write += any(run.glob(".*.tmp"))
        if (run / CHECKPOINT).exists():  # what --resume reads is whole and consistent
            header, _ = load_training_state(run)
            assert load_model(run / CHECKPOINT)[1]["step"] == header["step"]
    pid = _train_in_child(run, resume=(run / MARKER).exists())
    _, status = os.waitpid(pid, 0)
    failures = list(tmp_path.glob("child-*.txt"))
    assert not failures, failures[0].read_text()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert_same_run(reference, run)
    print(f"kills {kills}, double Ctrl-C {ctrl_c}, {mid_write} left a temporary file")
    assert not list(run.glob(".*.tmp"))  # what killed writers left is cleaned up


def test_metrics_csv_columns_have_no_spaces(tmp_path):
    """A real validation set scored on the road surface gave a ``val_iou_road surface``
    column."""
    from segscope.training import write_metrics

    history = [{"step": 1, "loss": 0.5},
               {"step": 2, "loss": 0.25, "val_miou": 0.75,
                "val_iou": {"background": 0.9, "road surface": 0.6}}]
    write_metrics(tmp_path, history, plot=False)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "step,loss,val_miou,val_iou_background,val_iou_road_surface"
    assert lines[1:] == ["1,0.5,,,", "2,0.25,0.75,0.9,0.6"]
    assert json.loads((tmp_path / "metrics.json").read_text()) == history


def test_divergence_says_whether_a_checkpoint_was_kept(tmp_path):
    """A run that blows up before its first checkpoint no longer claims one is kept."""
    with pytest.raises(SegscopeError, match="training diverged.*no checkpoint was written yet"):
        train(config(tmp_path, lr=1e30, log_every=1, val_every=0, val_data=None))
    assert not (tmp_path / CHECKPOINT).exists()
