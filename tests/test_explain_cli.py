"""``segscope explain`` end to end on a tiny checkpoint and a tiny PNG, and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _cli import run_cli
from PIL import Image

import segscope

H, W = 40, 56



@pytest.fixture
def files(tmp_path, tiny_segnet):
    ckpt = tmp_path / "model.safetensors"
    segscope.save_model(tiny_segnet, ckpt)
    rng = np.random.default_rng(0)
    img = tmp_path / "scene.png"
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(img)
    return tmp_path, ckpt, img


def test_lrp_end_to_end(files, capsys, tiny_segnet):
    tmp, ckpt, img = files
    mask = np.zeros((H, W), np.uint8)
    mask[15:25, 20:36] = 1
    Image.fromarray(mask).save(tmp / "mask.png")
    out = tmp / "out"
    code, stdout, err = run_cli(["explain", "-c", str(ckpt), "-i", str(img), "--class", "road",
                              "--mask", str(tmp / "mask.png"), "--keep", "all",
                              "--out", str(out)], capsys)
    assert code == 0, err
    assert "road mask" in stdout
    data = np.load(out / "relevance.npz")
    keys = set(data.files)
    assert {"pixels", "input", "absorbed_names", "absorbed_values", "output_total",
            "concept", "rule", "layer/data", "layer/conv3_1", "layer/conv1_1_D"} <= keys
    assert sum(k.startswith("layer/") for k in keys) == 37
    assert data["pixels"].shape == (H, W) and data["input"].shape == (3, H, W)
    assert str(data["rule"]) == "alpha1beta0"
    assert len(data["absorbed_names"]) == 26
    # the numbers are the library's numbers
    from segscope.data.io import read_image
    from segscope.explain import Concept, lrp

    image = torch.from_numpy(read_image(img)).permute(2, 0, 1)
    e = lrp(tiny_segnet, image, Concept.mask("road", mask))
    np.testing.assert_allclose(data["pixels"], e.pixels.numpy(), rtol=1e-5, atol=1e-9)
    assert float(data["output_total"]) == pytest.approx(e.output_total)
    total = float(data["input_total"]) + data["absorbed_values"].sum() + float(data["dropped"])
    assert total == pytest.approx(float(data["output_total"]), rel=1e-5)
    # the heatmap: red where R > 0, blue where R < 0, white at 0 (eq 8.2)
    heat = np.asarray(Image.open(out / "heatmap.png").convert("RGB")).astype(int)
    r = data["pixels"]
    cy, cx = H // 2, W // 2
    assert r[cy, cx] != 0
    if r[cy, cx] > 0:
        assert heat[cy, cx, 0] == 255 and heat[cy, cx, 2] < 255
    else:
        assert heat[cy, cx, 2] == 255 and heat[cy, cx, 0] < 255
    y, x = np.unravel_index(np.abs(r).argmax(), r.shape)
    assert tuple(heat[y, x]) == ((255, 0, 0) if r[y, x] > 0 else (0, 0, 255))
    over = np.asarray(Image.open(out / "overlay.png").convert("RGB"))
    assert over.shape == (H, W, 3)


def test_pixel_and_prediction_concepts(files, capsys):
    tmp, ckpt, img = files
    code, _, err = run_cli(["explain", "-c", str(ckpt), "-i", str(img), "--class", "1",
                         "--pixel", "3,4", "--rule", "conv1_1=zbox,default=alpha2beta1",
                         "--keep", "conv1_1,pool1", "--out", str(tmp / "a")], capsys)
    assert code == 0, err
    data = np.load(tmp / "a" / "relevance.npz")
    assert {"layer/conv1_1", "layer/pool1"} <= set(data.files)
    assert "zbox" in str(data["rule"])
    assert float(data["output_total"]) == pytest.approx(1.0)  # --pixel assigns 1
    label = np.ones((H, W), np.uint8)
    Image.fromarray(label).save(tmp / "label.png")
    code, _, err = run_cli(["explain", "-c", str(ckpt), "-i", str(img), "--class", "road",
                         "--from-prediction", "fn", "--label", str(tmp / "label.png"),
                         "--assign", "one", "--out", str(tmp / "b")], capsys)
    if code == 0:
        data = np.load(tmp / "b" / "relevance.npz")
        assert float(data["output_total"]) > 0
    else:  # the tiny model may predict road everywhere: then the set is empty
        assert "selects no pixels" in err


def _bad(tmp, ckpt, img, extra):
    return ["explain", "-c", str(ckpt), "-i", str(img), "--out", str(tmp / "bad"), *extra]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--class", "road", "--pixel", "40,3"], "outside the 40x56 image"),
        (["--class", "sky", "--pixel", "1,1"], "unknown class 'sky'"),
        (["--class", "road", "--pixel", "1,1", "--keep", "conv9_9"], "unknown layer 'conv9_9'"),
        (["--class", "road", "--pixel", "a,b"], "--pixel must be Y,X"),
        (["--class", "road"], "choose exactly one of"),
        (["--class", "road", "--pixel", "1,1", "--rule", "lrp0"], "unknown LRP rule"),
        (["--class", "road", "--pixel", "1,1", "--rule", "conv1_1=zbx,default=zplus"],
         "conv1_1=zbx: unknown LRP rule 'zbx'"),
        (["--class", "road", "--pixel", "1,1", "--rule", "conv1_1=zbox,zplus"],
         "got 'zplus'"),
        (["--class", "road", "--pixel", "1,1", "--rule", "pool1=zbox"], "'pool1'"),
        (["--class", "road", "--mask", "nope.png"], "mask file nope.png is not found"),
        (["--class", "road", "--pixel", "1,1", "--method", "magic"], "unknown method"),
        (["--class", "road", "--from-prediction", "tp"], "needs --label"),
    ],
)
def test_bad_arguments(files, capsys, extra, message):
    tmp, ckpt, img = files
    code, _, err = run_cli(_bad(tmp, ckpt, img, extra), capsys)
    assert code == 2
    assert err.startswith("segscope: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp / "bad" / "relevance.npz").exists()


def test_bad_files(files, capsys):
    tmp, ckpt, img = files
    Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp / "empty.png")
    Image.fromarray(np.ones((10, 10), np.uint8)).save(tmp / "small.png")
    (tmp / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (tmp / "notamodel.safetensors").write_bytes(b"hello")
    cases = [
        (_bad(tmp, ckpt, img, ["--class", "road", "--mask", str(tmp / "empty.png")]),
         "selects no pixels"),
        (_bad(tmp, ckpt, img, ["--class", "road", "--mask", str(tmp / "small.png")]),
         "mask is 10x10, the image is 40x56"),
        (_bad(tmp, ckpt, tmp / "corrupt.png", ["--class", "road", "--pixel", "1,1"]),
         "cannot read image"),
        (_bad(tmp, ckpt, tmp / "missing.png", ["--class", "road", "--pixel", "1,1"]),
         "not found"),
        (_bad(tmp, tmp / "notamodel.safetensors", img, ["--class", "road", "--pixel", "1,1"]),
         "not a segscope checkpoint"),
    ]
    for args, message in cases:
        code, _, err = run_cli(args, capsys)
        assert code == 2, args
        assert err.startswith("segscope: error: ") and message in err, err
        assert "Traceback" not in err


def test_keep_totals_writes_every_layer(files, capsys, tiny_segnet):
    tmp, ckpt, img = files
    code, _, err = run_cli(_bad(tmp, ckpt, img, ["--class", "road", "--pixel", "20,20",
                                              "--keep", "totals"]), capsys)
    assert code == 0, err
    data = np.load(tmp / "bad" / "relevance.npz")
    totals = {k[len("totals/"):]: data[k] for k in data.files if k.startswith("totals/")}
    assert list(totals) == tiny_segnet.layer_names
    assert not any(k.startswith("layer/") for k in data.files)
    np.testing.assert_allclose(totals["data"], data["input"].sum((1, 2)), rtol=1e-5)


def test_gradient_method_writes_its_files(files, capsys):
    tmp, ckpt, img = files
    code, _, err = run_cli(_bad(tmp, ckpt, img, ["--class", "road", "--pixel", "20,20",
                                              "--method", "gradxinput"]), capsys)
    assert code == 0, err
    data = np.load(tmp / "bad" / "gradxinput.npz")
    assert data["pixels"].shape == (H, W)
    assert (tmp / "bad" / "gradxinput.png").is_file()


def test_output_folder_rule(files, capsys):
    tmp, ckpt, img = files
    out = tmp / "one"
    first = ["explain", "-c", str(ckpt), "-i", str(img), "--class", "road", "--pixel", "20,20",
             "--out", str(out)]
    code, _, err = run_cli(first, capsys)
    assert code == 0, err
    before = (out / "relevance.npz").read_bytes()
    # a second explanation into the same folder is refused and changes nothing
    second = [*first[:-4], "--pixel", "5,5", "--out", str(out)]
    code, _, err = run_cli(second, capsys)
    assert code == 2 and "earlier 'segscope explain' run" in err and "--overwrite" in err
    assert err.count("\n") == 1
    assert (out / "relevance.npz").read_bytes() == before
    # --overwrite replaces it: the new concept's numbers, no file of the first run left
    code, _, err = run_cli([*second, "--overwrite"], capsys)
    assert code == 0, err
    data = np.load(out / "relevance.npz")
    assert "(5, 5)" in str(data["concept"]) and (out / "relevance.npz").read_bytes() != before
    # a folder of the user's own files is never written into, --overwrite or not
    mine = tmp / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        code, _, err = run_cli(["explain", "-c", str(ckpt), "-i", str(img), "--method",
                                "gradcam", "--class", "road", "--pixel", "20,20", "--out",
                                str(mine), *extra], capsys)
        assert code == 2 and "not made by segscope explain" in err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_bad_label_is_named_and_claims_nothing(files, capsys):
    tmp, ckpt, img = files
    label = np.zeros((H, W), np.uint8)
    label[0, 0] = 146
    Image.fromarray(label).save(tmp / "ids.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp / "small_label.png")
    for name, message in (("ids.png", "has id 146, which is not a class of this model"),
                          ("small_label.png", "label is 8x8, the image is 40x56")):
        out = tmp / f"out-{name}"
        code, _, err = run_cli(["explain", "-c", str(ckpt), "-i", str(img), "--class", "road",
                                "--from-prediction", "tp", "--label", str(tmp / name),
                                "--out", str(out)], capsys)
        assert code == 2 and message in err and name in err, err
        assert not out.exists()


def test_masks_drawn_any_way_select_the_drawn_pixels(tmp_path):
    """A mask drawn only in the alpha channel (strokes on a transparent canvas), or in
    green (R = 0), selected no pixels: the mask was read as its first channel."""
    from segscope.data.io import read_mask

    drawn = np.zeros((6, 8), bool)
    drawn[1:3, 2:6] = True
    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[drawn, 3] = 255  # black strokes, visible only through their alpha
    green = np.zeros((6, 8, 3), np.uint8)
    green[drawn, 1] = 200
    opaque = np.full((6, 8, 4), 255, np.uint8)  # an opaque canvas: the colour decides
    opaque[..., :3] = 0
    opaque[drawn, :3] = 255
    grey = drawn.astype(np.uint8) * 7
    for name, array in (("rgba", rgba), ("green", green), ("opaque", opaque), ("grey", grey)):
        Image.fromarray(array).save(tmp_path / f"{name}.png")
        assert np.array_equal(read_mask(tmp_path / f"{name}.png"), drawn), name
    palette = Image.fromarray(drawn.astype(np.uint8), mode="L").convert("P")
    palette.save(tmp_path / "palette.png")
    assert np.array_equal(read_mask(tmp_path / "palette.png"), drawn)
