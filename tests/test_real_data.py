"""Real datasets mapped to ROAD3, label/image IO and open_dataset, on tiny generated files.

Every fixture is written into tmp_path with PIL (or, for 16-bit colour PNGs which PIL
cannot write, with a small PNG encoder below); expected ROAD3 labels are written out by
hand from the dataset's documented class list, not taken from the code under test.
"""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segscope.data import ROAD3
from segscope.data.io import read_image, read_label, write_png
from segscope.data.real import (
    CamVid,
    CamVid32,
    Cityscapes,
    LabelFolder,
    Mapillary,
    Synthia,
    merge_road_surface,
    open_dataset,
    scoring_classes,
)
from segscope.errors import SegscopeError

H, W = 24, 32
RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------------------
# fixture writers
# --------------------------------------------------------------------------------------

def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _save(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    """Write ``arr`` with PIL; ``mode="P"`` stores it as palette indices (random palette)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "P":
        img = Image.frombytes("P", (arr.shape[1], arr.shape[0]), arr.astype(np.uint8).tobytes())
        img.putpalette([int(v) for v in RNG.integers(0, 256, 768)])
    else:
        img = Image.fromarray(arr)
    img.save(path, quality=95) if path.suffix == ".jpg" else img.save(path)
    return path


def _ids(n_ids: int, seed: int) -> np.ndarray:
    """A label whose first row walks through every id, then random ids."""
    ids = np.random.default_rng(seed).integers(0, n_ids, (H, W))
    ids.ravel()[:n_ids] = np.arange(n_ids)
    return ids


def _png16_rgb(path: Path, arr: np.ndarray) -> Path:
    """Write uint16 (H,W,3) as a 48-bit PNG, cycling through all five row filters so the
    reader has to undo each of them."""
    h, w, _ = arr.shape
    raw = arr.astype(">u2").reshape(h, -1).view(np.uint8).astype(np.int32)
    bpp = 6
    out = []
    prev = np.zeros_like(raw[0])
    for y in range(h):
        r = raw[y]
        a = np.concatenate([np.zeros(bpp, np.int32), r[:-bpp]])
        b = prev
        c = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        ftype = y % 5
        if ftype == 0:
            f = r
        elif ftype == 1:
            f = r - a
        elif ftype == 2:
            f = r - b
        elif ftype == 3:
            f = r - (a + b) // 2
        else:
            p = a + b - c
            pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
            pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
            f = r - pred
        out.append(bytes([ftype]) + (f % 256).astype(np.uint8).tobytes())
        prev = r

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(
            ">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"".join(out))) + chunk(b"IEND", b""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def _camvid(root: Path, split: str = "train", n: int = 3, absolute: bool = True,
            listing: bool = True) -> list[np.ndarray]:
    labels, lines = [], []
    for i in range(n):
        name = f"0001TP_{i:06d}.png"
        _save(root / split / name, _rgb(i))
        ids = _ids(12, i)
        _save(root / f"{split}annot" / name, ids.astype(np.uint8))
        labels.append(ids)
        prefix = "/SegNet/CamVid/" if absolute else ""
        lines.append(f"{prefix}{split}/{name} {prefix}{split}annot/{name}")
    if listing:
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return labels


CAMVID32 = {  # name: colour, from the CamVid 32-class list
    "Road": (128, 64, 128), "LaneMkgsDriv": (128, 0, 192), "LaneMkgsNonDriv": (192, 0, 64),
    "Void": (0, 0, 0), "Sky": (128, 128, 128), "Car": (64, 0, 128),
    "RoadShoulder": (128, 128, 192), "Sidewalk": (0, 0, 192),
}
CAMVID32_EXPECT = {"Road": 1, "LaneMkgsDriv": 2, "LaneMkgsNonDriv": 2, "Void": 255, "Sky": 0,
                   "Car": 0, "RoadShoulder": 0, "Sidewalk": 0}


def _camvid32_label(seed: int) -> tuple[np.ndarray, np.ndarray]:
    names = list(CAMVID32)
    pick = _ids(len(names), seed)
    colours = np.array([CAMVID32[n] for n in names], dtype=np.uint8)[pick]
    expect = np.array([CAMVID32_EXPECT[n] for n in names])[pick]
    return colours, expect


# --------------------------------------------------------------------------------------
# io
# --------------------------------------------------------------------------------------

def test_read_image_converts_modes(tmp_path):
    rgb = _rgb(1)
    out = read_image(_save(tmp_path / "a.png", rgb))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, (rgb / np.float32(255.0)).astype(np.float32))
    grey = rgb[:, :, 0]
    out = read_image(_save(tmp_path / "g.png", grey))
    assert out.shape == (H, W, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.repeat(grey[:, :, None] / 255.0, 3, axis=2), atol=1e-7)
    rgba = np.dstack([rgb, np.full((H, W), 7, np.uint8)])
    np.testing.assert_allclose(read_image(_save(tmp_path / "r.png", rgba)), rgb / 255.0,
                               atol=1e-7)
    # A palette image yields the palette colours.
    pal = Image.frombytes("P", (2, 1), bytes([0, 1]))
    pal.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    pal.save(tmp_path / "p.png")
    np.testing.assert_allclose(read_image(tmp_path / "p.png")[0] * 255,
                               [[10, 20, 30], [200, 100, 0]], atol=1e-4)
    # 16-bit grey keeps its full range.
    g16 = np.array([[0, 1000, 65535]], dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    np.testing.assert_allclose(read_image(tmp_path / "g16.png")[0, :, 1], g16[0] / 65535.0,
                               atol=1e-7)


def test_read_label_modes(tmp_path):
    ids = _ids(66, 3).astype(np.uint8)
    np.testing.assert_array_equal(read_label(_save(tmp_path / "l.png", ids)), ids)
    np.testing.assert_array_equal(read_label(_save(tmp_path / "p.png", ids, "P")), ids)
    ids16 = np.array([[0, 3, 22, 300, 65535]], dtype=np.uint16)
    Image.fromarray(ids16).save(tmp_path / "i16.png")
    np.testing.assert_array_equal(read_label(tmp_path / "i16.png"), ids16)
    col = np.array([[[128, 64, 128], [1, 2, 3]]], dtype=np.uint8)
    _save(tmp_path / "c.png", col)
    np.testing.assert_array_equal(read_label(tmp_path / "c.png", rgb=True),
                                  [[128 * 65536 + 64 * 256 + 128, 65536 + 2 * 256 + 3]])


def test_read_label_16bit_colour_keeps_low_byte(tmp_path):
    arr = np.random.default_rng(5).integers(0, 65536, (H, W, 3)).astype(np.uint16)
    arr[0, :4, 0] = [3, 22, 300, 0]
    _png16_rgb(tmp_path / "s.png", arr)
    np.testing.assert_array_equal(read_label(tmp_path / "s.png"), arr[:, :, 0])
    np.testing.assert_allclose(read_image(tmp_path / "s.png"), arr / 65535.0, atol=1e-6)


def test_write_png_roundtrip_and_atomic(tmp_path):
    rgb = _rgb(2)
    out = write_png(tmp_path / "sub" / "x.png", rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), rgb)
    write_png(tmp_path / "f.png", np.array([[0.0, 0.5, 1.0]]))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "f.png")), [[0, 128, 255]])
    ids16 = np.array([[0, 400]], dtype=np.uint16)
    write_png(tmp_path / "l16.png", ids16)
    np.testing.assert_array_equal(read_label(tmp_path / "l16.png"), ids16)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "f.png", "l16.png", "x.png"]
    with pytest.raises(SegscopeError, match="shape"):
        write_png(tmp_path / "bad.png", np.zeros((2, 3, 5), np.uint8))
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.parametrize("content", [b"", b"hello, not a picture", "truncated"])
def test_read_broken_files(tmp_path, content):
    path = tmp_path / "broken.png"
    if content == "truncated":
        _save(tmp_path / "ok.png", _rgb(0))
        content = (tmp_path / "ok.png").read_bytes()[:200]
    path.write_bytes(content)
    for reader in (read_image, read_label):
        with pytest.raises(SegscopeError) as err:
            reader(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_read_missing_file(tmp_path):
    with pytest.raises(SegscopeError, match="not found") as err:
        read_image(tmp_path / "nope.png")
    assert "nope.png" in str(err.value)


# --------------------------------------------------------------------------------------
# loaders, pixel by pixel
# --------------------------------------------------------------------------------------

def _check_item(ds, i: int, expect: np.ndarray, image: np.ndarray | None = None) -> None:
    x, y = ds[i]
    assert x.dtype == torch.float32 and x.shape == (3, H, W)
    assert y.dtype == torch.int64 and y.shape == (H, W)
    np.testing.assert_array_equal(y.numpy(), expect)
    if image is not None:
        np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), image / 255.0, atol=1e-7)


def test_camvid_tutorial_layout_absolute_listing(tmp_path):
    labels = _camvid(tmp_path, "train", absolute=True)
    ds = CamVid(tmp_path, "train")
    assert len(ds) == 3 and ds.class_names == ROAD3 and ds.has_markings is False
    assert ds.files[1] == (tmp_path / "train" / "0001TP_000001.png",
                           tmp_path / "trainannot" / "0001TP_000001.png")
    for i, ids in enumerate(labels):
        # 3 Road -> road, 11 Unlabelled -> ignore, everything else background.
        expect = np.where(ids == 3, 1, np.where(ids == 11, 255, 0))
        _check_item(ds, i, expect, _rgb(i))
    # The first row holds ids 0..11 in order.
    np.testing.assert_array_equal(ds[0][1][0, :12].numpy(),
                                  [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 255])


def test_camvid_without_listing_and_size_limit(tmp_path):
    labels = _camvid(tmp_path, "val", n=3, listing=False)
    ds = CamVid(tmp_path, "val", size=(12, 16), limit=2)
    assert len(ds) == 2
    x, y = ds[1]
    assert x.shape == (3, 12, 16) and y.shape == (12, 16)
    # Nearest: output pixel (i, j) covers source pixels 2i..2i+1; its centre falls on 2i+1.
    full = np.where(labels[1] == 3, 1, np.where(labels[1] == 11, 255, 0))
    np.testing.assert_array_equal(y.numpy(), full[1::2, 1::2])
    # Bilinear (antialiased) halving matches PIL's bilinear resize of each channel.
    ref = np.stack([np.asarray(Image.fromarray(_rgb(1)[:, :, c].astype(np.float32) / 255.0)
                               .resize((16, 12), Image.BILINEAR)) for c in range(3)])
    np.testing.assert_allclose(x.numpy(), ref, atol=2e-3)


def test_image_upscale_matches_pil(tmp_path):
    _camvid(tmp_path, "val", n=1, listing=False)
    x, _ = CamVid(tmp_path, "val", size=(36, 40))[0]
    ref = np.stack([np.asarray(Image.fromarray(_rgb(0)[:, :, c].astype(np.float32) / 255.0)
                               .resize((40, 36), Image.BILINEAR)) for c in range(3)])
    np.testing.assert_allclose(x.numpy(), ref, atol=2e-3)


@pytest.mark.parametrize("layout", ["simple", "original", "kaggle", "splitfile"])
def test_camvid32_layouts(tmp_path, layout):
    img_dir, lbl_dir, split = {
        "simple": ("images", "labels", None),
        "original": ("701_StillsRaw_full", "LabeledApproved_full", None),
        "kaggle": ("val", "val_labels", "val"),
        "splitfile": ("images", "labels", "val"),
    }[layout]
    expects = []
    for i in range(3):
        colours, expect = _camvid32_label(10 + i)
        _save(tmp_path / img_dir / f"0006R0_f{i:05d}.png", _rgb(i))
        _save(tmp_path / lbl_dir / f"0006R0_f{i:05d}_L.png", colours)
        expects.append(expect)
    keep = [0, 1, 2]
    if layout == "splitfile":
        (tmp_path / "val.txt").write_text("0006R0_f00002.png\n0006R0_f00000.png\n")
        keep = [2, 0]
    ds = CamVid32(tmp_path, split)
    assert len(ds) == len(keep) and ds.has_markings is True
    for j, i in enumerate(keep):
        _check_item(ds, j, expects[i], _rgb(i))
    assert open_dataset(tmp_path, split=split).files == ds.files


def test_camvid32_unknown_colour(tmp_path):
    colours, _ = _camvid32_label(0)
    colours[5, 7] = (1, 2, 3)
    _save(tmp_path / "images" / "a.png", _rgb(0))
    _save(tmp_path / "labels" / "a_L.png", colours)
    with pytest.raises(SegscopeError, match=r"colour \(1, 2, 3\)") as err:
        CamVid32(tmp_path)[0]
    assert "a_L.png" in str(err.value)


def test_mapillary(tmp_path):
    expects = []
    for i in range(2):
        ids = _ids(66, 20 + i)
        _save(tmp_path / "validation" / "images" / f"m{i}.jpg", _rgb(i))
        _save(tmp_path / "validation" / "labels" / f"m{i}.png", ids, "P")
        # 13 road; 23 crosswalk-zebra, 24 marking-general; 65 unlabeled.
        expects.append(np.select([ids == 13, (ids == 23) | (ids == 24), ids == 65],
                                 [1, 2, 255], 0))
    ds = Mapillary(tmp_path, "val")
    assert len(ds) == 2 and ds.has_markings is True
    for i in range(2):
        _check_item(ds, i, expects[i])
        # JPEG is lossy: compare with PIL's own decoding of the file.
        ref = np.asarray(Image.open(ds.files[i][0]).convert("RGB")) / np.float32(255.0)
        np.testing.assert_allclose(ds[i][0].permute(1, 2, 0).numpy(), ref, atol=1e-6)


def test_synthia_16bit_labels(tmp_path):
    expects = []
    for i in range(2):
        ids = _ids(23, 30 + i)
        gt = np.zeros((H, W, 3), dtype=np.uint16)
        gt[:, :, 0] = ids
        gt[:, :, 1] = 1000 + ids  # instance ids in G must not leak into the class
        _png16_rgb(tmp_path / "GT" / "LABELS" / f"{i:07d}.png", gt)
        _save(tmp_path / "RGB" / f"{i:07d}.png", _rgb(i))
        expects.append(np.select([ids == 3, ids == 22, ids == 0], [1, 2, 255], 0))
    ds = Synthia(tmp_path)
    assert len(ds) == 2 and ds.has_markings is True
    for i in range(2):
        _check_item(ds, i, expects[i], _rgb(i))
    np.testing.assert_array_equal(ds[0][1][0, :23].numpy(),
                                  [255, 0, 0, 1] + [0] * 18 + [2])


def test_cityscapes(tmp_path):
    expects = {}
    for city, n in (("aachen", 2), ("bremen", 1)):
        for i in range(n):
            stem = f"{city}_{i:06d}_000019"
            ids = _ids(34, hash(stem) % 1000)
            _save(tmp_path / "leftImg8bit" / "val" / city / f"{stem}_leftImg8bit.png", _rgb(i))
            lbl = tmp_path / "gtFine" / "val" / city
            _save(lbl / f"{stem}_gtFine_labelIds.png", ids.astype(np.uint8))
            _save(lbl / f"{stem}_gtFine_color.png", _rgb(9))  # must be ignored
            expects[stem] = np.where(ids == 7, 1, np.where(ids <= 6, 255, 0))
    ds = Cityscapes(tmp_path, "val")
    assert len(ds) == 3 and ds.has_markings is False
    for i, (img, lbl) in enumerate(ds.files):
        stem = img.name[: -len("_leftImg8bit.png")]
        assert lbl.name == f"{stem}_gtFine_labelIds.png"
        _check_item(ds, i, expects[stem])


def test_label_folder_id_maps(tmp_path):
    ids = _ids(20, 40)
    _save(tmp_path / "images" / "a.png", _rgb(0))
    _save(tmp_path / "labels" / "a.png", ids.astype(np.uint8))
    full = {i: 0 for i in range(20)} | {5: 1, 6: "markings", 7: "ignore"}
    expect = np.select([ids == 5, ids == 6, ids == 7], [1, 2, 255], 0)
    ds = LabelFolder(tmp_path, full)
    assert ds.has_markings is True
    _check_item(ds, 0, expect, _rgb(0))
    (tmp_path / "map.json").write_text(json.dumps({str(k): v for k, v in full.items()}))
    _check_item(LabelFolder(tmp_path, tmp_path / "map.json"), 0, expect)
    with pytest.raises(SegscopeError) as err:
        LabelFolder(tmp_path, {i: 0 for i in range(17)})[0]
    assert str(err.value) == (f"label {tmp_path / 'labels' / 'a.png'} contains id 17, "
                              "which the id map does not cover")
    assert LabelFolder(tmp_path, {i: 0 for i in range(20)} | {5: 1}).has_markings is False
    # a segscope synth folder has no id map: an id that is no ROAD3 id is called that
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(SegscopeError, match=r"contains id \d+, which ROAD3 \(0 background"):
        LabelFolder.synth(tmp_path)[0]


def test_label_folder_colour_keys(tmp_path):
    colours, expect = _camvid32_label(3)
    _save(tmp_path / "images" / "a.png", _rgb(0))
    _save(tmp_path / "labels" / "a.png", colours)
    cmap = {"#804080": "road", "128,0,192": 2, "192,0,64": 2, "0,0,0": 255}
    cmap |= {",".join(map(str, c)): 0 for n, c in CAMVID32.items() if CAMVID32_EXPECT[n] == 0}
    _check_item(LabelFolder(tmp_path, cmap), 0, expect)


@pytest.mark.parametrize("bad, msg", [
    ({"x": 1}, "key 'x'"), ({"1": 3}, "value 3"), ({"1": "lane"}, "value 'lane'"),
    ({"1": 1, "0,0,0": 0}, "mixes"), ({}, "empty"),
])
def test_bad_id_maps(tmp_path, bad, msg):
    _save(tmp_path / "images" / "a.png", _rgb(0))
    _save(tmp_path / "labels" / "a.png", np.zeros((H, W), np.uint8))
    with pytest.raises(SegscopeError, match=msg):
        LabelFolder(tmp_path, bad)


def test_bad_id_map_file(tmp_path):
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(SegscopeError, match="not valid JSON") as err:
        LabelFolder(tmp_path, tmp_path / "m.json")
    assert "m.json" in str(err.value)
    with pytest.raises(SegscopeError, match="not found"):
        LabelFolder(tmp_path, tmp_path / "missing.json")


def _synth_folder(root: Path) -> np.ndarray:
    label = np.select([_ids(4, 50) == 1, _ids(4, 50) == 2, _ids(4, 50) == 3], [1, 2, 255], 0)
    _save(root / "images" / "000000.png", _rgb(0))
    _save(root / "labels" / "000000.png", label.astype(np.uint8))
    (root / "manifest.json").write_text(json.dumps({"n": 1}))
    return label


def test_synth_folder_identity(tmp_path):
    label = _synth_folder(tmp_path)
    ds = open_dataset(tmp_path)
    assert isinstance(ds, LabelFolder) and ds.has_markings is True
    _check_item(ds, 0, label, _rgb(0))
    # Datasets go to DataLoader workers: they must pickle and read the same after.
    again = pickle.loads(pickle.dumps(ds))
    _check_item(again, 0, label, _rgb(0))
    # An id outside ROAD3 in a synth folder is an error, not a silent class.
    bad = label.astype(np.uint8)
    bad[0, 0] = 3
    _save(tmp_path / "labels" / "000000.png", bad)
    with pytest.raises(SegscopeError, match="contains id 3"):
        ds[0]


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------

def _one_line_naming(exc: SegscopeError, name: str) -> None:
    text = str(exc)
    assert "\n" not in text and name in text, text


def test_root_missing(tmp_path):
    for cls in (CamVid, CamVid32, Mapillary, Synthia, Cityscapes):
        with pytest.raises(SegscopeError, match="not found") as err:
            cls(tmp_path / "nowhere")
        _one_line_naming(err.value, "nowhere")
    with pytest.raises(SegscopeError, match="not found") as err:
        open_dataset(tmp_path / "nowhere")
    _one_line_naming(err.value, "nowhere")


def test_empty_image_folder(tmp_path):
    (tmp_path / "RGB").mkdir()
    (tmp_path / "GT" / "LABELS").mkdir(parents=True)
    with pytest.raises(SegscopeError, match="no images found") as err:
        Synthia(tmp_path)
    _one_line_naming(err.value, str(tmp_path / "RGB"))


def test_image_without_label_and_label_without_image(tmp_path):
    _camvid(tmp_path, "val", listing=False)
    (tmp_path / "valannot" / "0001TP_000001.png").unlink()
    with pytest.raises(SegscopeError, match="has no label") as err:
        CamVid(tmp_path, "val")
    _one_line_naming(err.value, "0001TP_000001.png")
    (tmp_path / "val" / "0001TP_000001.png").unlink()
    (tmp_path / "val" / "0001TP_000002.png").unlink()
    with pytest.raises(SegscopeError, match="has no image") as err:
        CamVid(tmp_path, "val")
    _one_line_naming(err.value, "0001TP_000002.png")


def test_listing_names_missing_file(tmp_path):
    _camvid(tmp_path, "train")
    (tmp_path / "train" / "0001TP_000002.png").unlink()
    with pytest.raises(SegscopeError, match="train.txt line 3") as err:
        CamVid(tmp_path, "train")
    _one_line_naming(err.value, "0001TP_000002.png")


def test_size_mismatch(tmp_path):
    _camvid(tmp_path, "val", n=1)
    _save(tmp_path / "valannot" / "0001TP_000000.png", np.zeros((12, 16), np.uint8))
    with pytest.raises(SegscopeError) as err:
        CamVid(tmp_path, "val")[0]
    _one_line_naming(err.value, "valannot/0001TP_000000.png")
    assert "24x32" in str(err.value) and "12x16" in str(err.value)


def test_label_id_out_of_range(tmp_path):
    _camvid(tmp_path, "val", n=1)
    ids = np.zeros((H, W), np.uint8)
    ids[3, 4] = 12
    _save(tmp_path / "valannot" / "0001TP_000000.png", ids)
    with pytest.raises(SegscopeError, match="contains id 12") as err:
        CamVid(tmp_path, "val")[0]
    _one_line_naming(err.value, "0001TP_000000.png")


def test_corrupt_png_in_dataset(tmp_path):
    _camvid(tmp_path, "val", n=2)
    (tmp_path / "val" / "0001TP_000001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = CamVid(tmp_path, "val")
    ds[0]
    with pytest.raises(SegscopeError, match="cannot read image") as err:
        ds[1]
    _one_line_naming(err.value, "0001TP_000001.png")


# --------------------------------------------------------------------------------------
# open_dataset
# --------------------------------------------------------------------------------------

def test_open_dataset_detects_layouts(tmp_path):
    _camvid(tmp_path / "cv", "val")
    _camvid(tmp_path / "cv", "train")
    cv = open_dataset(tmp_path / "cv")
    assert isinstance(cv, CamVid) and cv.split == "val"
    assert open_dataset(tmp_path / "cv", split="train").split == "train"
    assert isinstance(open_dataset(tmp_path / "cv" / "train.txt"), CamVid)

    c32 = tmp_path / "c32"
    _save(c32 / "images" / "a.png", _rgb(0))
    _save(c32 / "labels" / "a_L.png", _camvid32_label(0)[0])
    assert isinstance(open_dataset(c32), CamVid32)

    mp = tmp_path / "mp"
    _save(mp / "validation" / "images" / "a.png", _rgb(0))
    _save(mp / "validation" / "labels" / "a.png", np.zeros((H, W), np.uint8), "P")
    assert isinstance(open_dataset(mp), Mapillary)

    sy = tmp_path / "sy"
    _save(sy / "RGB" / "a.png", _rgb(0))
    _png16_rgb(sy / "GT" / "LABELS" / "a.png", np.zeros((H, W, 3), np.uint16))
    assert isinstance(open_dataset(sy), Synthia)

    cs = tmp_path / "cs"
    _save(cs / "leftImg8bit" / "val" / "x" / "x_0_0_leftImg8bit.png", _rgb(0))
    _save(cs / "gtFine" / "val" / "x" / "x_0_0_gtFine_labelIds.png", np.zeros((H, W), np.uint8))
    assert isinstance(open_dataset(cs), Cityscapes)

    _synth_folder(tmp_path / "syn")
    assert isinstance(open_dataset(tmp_path / "syn"), LabelFolder)

    fo = tmp_path / "fo"
    _save(fo / "images" / "a.png", _rgb(0))
    _save(fo / "labels" / "a.png", np.zeros((H, W), np.uint8))
    with pytest.raises(SegscopeError, match="--id-map"):
        open_dataset(fo)
    assert isinstance(open_dataset(fo, id_map={0: 0}), LabelFolder)
    # kind= forces a reading: read as CamVid32, the grey labels are not colour-coded.
    forced = open_dataset(fo, kind="camvid32")
    assert isinstance(forced, CamVid32)
    with pytest.raises(SegscopeError, match="one-channel"):
        forced[0]


def test_open_dataset_unknown_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(SegscopeError, match="cannot tell") as err:
        open_dataset(tmp_path)
    assert "leftImg8bit" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SegscopeError, match="unknown data kind"):
        open_dataset(tmp_path, kind="kitti")


@pytest.mark.parametrize("spec", ["synthetic:", "synthetic:abc", "synthetic:0",
                                  "synthetic:3:narrow:x", "synthetic:1:2:3:4"])
def test_bad_synthetic_spec(spec):
    with pytest.raises(SegscopeError, match="synthetic"):
        open_dataset(spec)


def test_synthetic_spec():
    synthetic = pytest.importorskip("segscope.data.synthetic")
    ds = open_dataset("synthetic:5:randomized:3", size=(32, 48), limit=2)
    assert isinstance(ds, synthetic.SyntheticRoads) and len(ds) == 2
    x, y = ds[0]
    assert x.shape == (3, 32, 48) and y.shape == (32, 48)
    ref = synthetic.SyntheticRoads(2, size=(32, 48), seed=3, preset="randomized")
    torch.testing.assert_close(ref[0][0], x)


# --------------------------------------------------------------------------------------
# scoring on the road surface
# --------------------------------------------------------------------------------------

def test_merge_road_surface():
    pred = np.array([0, 1, 2, 0, 1, 2, 2])
    label = np.array([0, 1, 1, 1, 255, 0, 2])
    p2, l2 = merge_road_surface(pred, label)
    np.testing.assert_array_equal(p2, [0, 1, 1, 0, 1, 1, 1])
    np.testing.assert_array_equal(l2, [0, 1, 1, 1, 255, 0, 1])
    tp, tl = merge_road_surface(torch.from_numpy(pred), torch.from_numpy(label))
    assert tp.dtype == torch.int64 and tl.dtype == torch.int64
    assert tp.tolist() == p2.tolist() and tl.tolist() == l2.tolist()


def test_scoring_classes(tmp_path):
    _camvid(tmp_path, "val", n=1)
    assert scoring_classes(CamVid(tmp_path, "val")) == ("background", "road surface")
    _synth_folder(tmp_path / "s")
    assert scoring_classes(open_dataset(tmp_path / "s")) == ROAD3


# --------------------------------------------------------------------------------------
# the real CamVid (development copy; skipped elsewhere)
# --------------------------------------------------------------------------------------

def test_real_camvid(camvid_root):
    assert len(CamVid(camvid_root, "train")) == 367
    val = open_dataset(camvid_root)
    assert isinstance(val, CamVid) and len(val) == 101 and val.has_markings is False
    counts = torch.zeros(256, dtype=torch.int64)
    for x, y in val:
        assert x.shape == (3, 360, 480) and y.shape == (360, 480)
        counts += torch.bincount(y.ravel(), minlength=256)
    share = counts.double() / counts.sum()
    assert counts[2] == 0 and counts.sum() == counts[[0, 1, 255]].sum()
    # The dataset's README: road 29 % of val pixels, unlabelled 1.7 %.
    assert abs(share[1].item() - 0.29) < 0.02
    assert abs(share[255].item() - 0.017) < 0.005


# --------------------------------------------------------------------------------------
# splits, listings that escape, the registry of kinds
# --------------------------------------------------------------------------------------

def test_available_and_default_splits(tmp_path):
    from segscope.data.real import available_splits, default_split

    only_test = tmp_path / "only_test"
    _camvid(only_test, "test", n=1, listing=False)
    assert available_splits(only_test) == ["test"]
    assert default_split(only_test) == ("test", f"{only_test} has only the split 'test': "
                                        "using it")
    ds = open_dataset(only_test)
    assert ds.split == "test" and "only the split 'test'" in ds.split_note and len(ds) == 1
    both = tmp_path / "both"
    for split in ("train", "val", "test"):
        _camvid(both, split, n=1, listing=split != "test")
    assert available_splits(both) == ["train", "val", "test"]
    assert default_split(both) == ("val", None)
    assert default_split(both, purpose="train") == ("train", None)
    assert open_dataset(both).split_note is None
    (both / "val.txt").unlink()
    shutil.rmtree(both / "val")
    shutil.rmtree(both / "valannot")
    with pytest.raises(SegscopeError, match="no 'val' split; it has train, test"):
        open_dataset(both)
    with pytest.raises(SegscopeError, match="no split 'nope'; it has train, test"):
        open_dataset(both, split="nope")
    synth = tmp_path / "synth"
    (synth / "images").mkdir(parents=True)
    (synth / "labels").mkdir()
    (synth / "manifest.json").write_text("{}")
    assert available_splits(synth) == [] and default_split(synth) == (None, None)


def test_camvid_listing_reads_under_its_root_only(tmp_path):
    _camvid(tmp_path / "camvid", "val", n=1, listing=False)
    outside = _save(tmp_path / "outside.png", _rgb(0))
    listing = tmp_path / "camvid" / "val.txt"
    listing.write_text("../outside.png valannot/0001TP_000000.png\n")
    with pytest.raises(SegscopeError, match="line 1: ../outside.png points outside"):
        CamVid(tmp_path / "camvid", "val")
    listing.write_text(f"{outside} {outside}\n")  # an absolute path is never used as is
    with pytest.raises(SegscopeError, match="not found under"):
        CamVid(tmp_path / "camvid", "val")
    # the tutorial's foreign absolute paths are found by name under the root
    listing.write_text("/SegNet/CamVid/val/0001TP_000000.png "
                       "/SegNet/CamVid/valannot/0001TP_000000.png\n")
    assert CamVid(tmp_path / "camvid", "val").files == [
        (tmp_path / "camvid" / "val" / "0001TP_000000.png",
         tmp_path / "camvid" / "valannot" / "0001TP_000000.png")]


@pytest.mark.parametrize("folder", ["/etc", "../elsewhere", "images/../../x"])
def test_synth_manifest_cannot_name_folders_outside(tmp_path, folder):
    root = tmp_path / "synth"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "manifest.json").write_text(json.dumps({"images": folder}))
    with pytest.raises(SegscopeError, match="must name a folder inside the dataset"):
        open_dataset(root)


def test_synth_folder_whose_files_disagree_with_its_manifest_is_refused(tmp_path):
    """A manifest of 4 scenes over 3 image/label pairs (one removed) was read silently."""
    from segscope.cli.synth import write_dataset
    from segscope.data.synthetic import SyntheticRoads

    root = tmp_path / "synth"
    write_dataset(SyntheticRoads(4, size=(16, 24), seed=2, preset="urban"), root)
    assert len(open_dataset(root)) == 4 and len(open_dataset(root, limit=2)) == 2
    (root / "images" / "000002.png").unlink()
    (root / "labels" / "000002.png").unlink()
    with pytest.raises(SegscopeError, match="lists 4 scenes but 3 image/label pairs"):
        open_dataset(root)


def test_adding_a_dataset_kind_as_docs_extending_says(tmp_path, monkeypatch):
    """Runs the code of docs/extending.md's "Add a dataset" on a toy folder."""
    import re

    from segscope.data import real

    doc = (Path(__file__).resolve().parents[1] / "docs" / "extending.md").read_text()
    section = doc.split("## Add a dataset", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    root = tmp_path / "my_toy_folder"
    ids = np.array([[0, 1, 2], [9, 1, 1]], np.uint8)
    _save(root / "photos" / "a.png", _rgb(3)[:2, :3])
    _save(root / "masks" / "a.png", ids)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(real, "KINDS", dict(real.KINDS))  # the registration is undone
    namespace: dict = {}
    exec(compile(code, "docs/extending.md", "exec"), namespace)
    assert "toy" in real.data_kinds() and real.detect_kind(root) == "toy"
    image, label = namespace["image"], namespace["label"]
    assert image.shape == (3, 2, 3) and label.tolist() == [[0, 1, 2], [255, 1, 1]]
    assert open_dataset(root, kind="toy").files == [(root / "photos" / "a.png",
                                                     root / "masks" / "a.png")]
    with pytest.raises(SegscopeError, match="no splits"):
        open_dataset(root, split="val")
    _save(root / "masks" / "a.png", np.full((2, 3), 7, np.uint8))
    with pytest.raises(SegscopeError, match="contains id 7, which toy masks"):
        open_dataset(root)[0]


def test_a_folder_without_pictures_or_pairs_says_where_to_look(tmp_path):
    from segscope.data.real import open_dataset
    from segscope.predict import find_images

    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    with pytest.raises(SegscopeError, match="its subfolder.s. images hold images"):
        find_images([tmp_path])
    with pytest.raises(SegscopeError, match="has no images/ and labels/ folders"):
        open_dataset(str(tmp_path), kind="folder")
