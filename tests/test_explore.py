"""segscope explore over HTTP: served numbers equal the Python API's, bad requests get a
one-line 4xx and the server keeps serving, only files under the given folders are read."""

from __future__ import annotations

import csv
import json
import os
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the explore extra is not installed "
                    '(pip install -e ".[explore]")')
pytest.importorskip("uvicorn", reason="the explore extra is not installed")

sys.path.insert(0, os.path.dirname(__file__))
from _cli import run_cli  # noqa: E402
from _explore import SIZE, npy, picture_folder, request, tiny_model  # noqa: E402

from segscope import analysis as A  # noqa: E402
from segscope.explain import Concept, gradcam, lrp  # noqa: E402
from segscope.explore import Catalog, Explorer, running  # noqa: E402


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore")
    pics, secret = picture_folder(root)
    diag = root / "diag"
    diag.mkdir()
    rows = [("real", "a.png", pics / "a.png", 0.2, 0.8), ("real", "b.png", pics / "b.png", 0.9,
            0.3), ("real", "secret.png", secret, 0.95, 0.1),
            ("synthetic", "#0", "synthetic:0", 0.1, 0.9)]
    with open(diag / "images.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "image", "path", "failure_score", "iou"])
        w.writerows([(d, i, str(p), s, u) for d, i, p, s, u in rows])
    (diag / "diagnosis.json").write_text(json.dumps(
        {"sources": {"real": {"root": str(pics)}, "synthetic": "synthetic:1"}}))
    return root, pics, secret, diag


@pytest.fixture(scope="module")
def server(folders):
    _, pics, _, diag = folders
    model = tiny_model()
    catalog = Catalog(["synthetic:2:narrow:1", str(pics)], diagnosis=diag, size=SIZE,
                      max_upload=200_000)
    explorer = Explorer(model, catalog)
    with running(explorer) as url:
        yield url, explorer, model
    catalog.close()


def _alive(url):
    status, info = request(f"{url}/api/info")
    assert status == 200 and info["classes"] == ["background", "road", "markings"]


def _explain(url, **body):
    status, out = request(f"{url}/api/explain", body)
    assert status == 200, out
    return out


def test_pixel_lrp_served_equals_python_api(server):
    url, explorer, model = server
    out = _explain(url, image="d0-0", concept={"kind": "pixel", "y": 30, "x": 50})
    image, _ = explorer.catalog.load("d0-0")
    c = out["concept"]
    assert (c["y"], c["x"], c["assign"]) == (30, 50, "one")
    # "predicted": the class the model predicts at that pixel
    assert c["class_index"] == int(model(image[None])[0].argmax(0)[30, 50])
    ref = lrp(model, image, Concept.pixel(c["class_index"], 30, 50), keep="all")
    status, pixels = request(f"{url}/api/results/{out['id']}/pixels.npy")
    assert status == 200
    np.testing.assert_allclose(npy(pixels), ref.pixels.numpy(), rtol=1e-5, atol=1e-7)
    # conservation: what reaches the pixels plus what the biases absorbed is the start
    assert out["input_total"] + out["absorbed_total"] + out["dropped"] == \
        pytest.approx(out["output_total"], rel=1e-4)
    assert out["output_total"] == pytest.approx(1.0)
    # the layer grid and the feature values are those of the kept layers
    status, layers = request(f"{url}/api/results/{out['id']}/layers.json")
    assert status == 200 and [x["name"] for x in layers["layers"]][:2] == ["conv1_1_D",
                                                                          "conv1_2_D"]
    assert len(layers["layers"]) == 37 and layers["layers"][-1]["name"] == "data"
    _, layer = request(f"{url}/api/results/{out['id']}/layer/conv2_1.npy")
    np.testing.assert_allclose(npy(layer), A.layer_sum(ref.layers["conv2_1"]), rtol=1e-4,
                               atol=1e-7)
    assert out["fv"]["layer"] == "conv2_1"
    np.testing.assert_allclose(out["fv"]["values"], ref.feature_values("conv2_1").numpy(),
                               rtol=1e-4, atol=1e-6)
    assert [t["channel"] for t in out["fv"]["top"]][0] == int(ref.feature_values("conv2_1")
                                                              .argmax())
    # switch-off numbers from the served map, by the analysis module
    curve = A.switch_off_curve(ref.pixels)
    assert out["switch_off"]["pixels_holding"]["0.99"] == pytest.approx(
        curve.pixels_holding(0.99), abs=1e-9)
    # the pictures are PNGs of the image's size
    from PIL import Image

    for name in ("heatmap", "overlay"):
        status, png = request(f"{url}/api/results/{out['id']}/{name}.png")
        assert status == 200
        assert Image.open(__import__("io").BytesIO(png)).size == (SIZE[1], SIZE[0])


def test_mask_runs_composite_rule_and_gradcam(server):
    url, explorer, model = server
    runs = [[5 * SIZE[1] + 10, 6], [6 * SIZE[1] + 9, 8]]
    mask = np.zeros(SIZE, bool)
    mask[5, 10:16] = True
    mask[6, 9:17] = True
    rule = "conv1_1=zbox,default=alpha1beta0"
    out = _explain(url, image="d0-1", rule=rule,
                   concept={"kind": "mask", "class": "road", "mask": runs})
    _, sel = request(f"{url}/api/results/{out['id']}/concept.npy")
    np.testing.assert_array_equal(npy(sel), mask)
    assert out["concept"]["selected"] == 14 and out["concept"]["assign"] == "score"
    image, _ = explorer.catalog.load("d0-1")
    ref = lrp(model, image, Concept.mask("road", mask), rule=[("conv1_1", "zbox"),
                                                            ("default", "alpha1beta0")])
    _, pixels = request(f"{url}/api/results/{out['id']}/pixels.npy")
    np.testing.assert_allclose(npy(pixels), ref.pixels.numpy(), rtol=1e-5, atol=1e-7)
    for rf in (False, True):
        out = _explain(url, image="d0-1", method="gradcam-rf" if rf else "gradcam",
                       layer="conv4_1_D", concept={"kind": "mask", "class": "road", "mask": runs})
        assert out["layer"] == "conv4_1_D" and out["receptive_field"] is rf
        _, got = request(f"{url}/api/results/{out['id']}/pixels.npy")
        want = gradcam(model, image, Concept.mask("road", mask), "conv4_1_D", receptive_field=rf)
        np.testing.assert_allclose(npy(got), want.numpy(), rtol=1e-5, atol=1e-7)


def test_true_positives_and_view(server):
    url, explorer, model = server
    status, view = request(f"{url}/api/images/d0-0")
    assert status == 200 and view["has_label"] and (view["height"], view["width"]) == SIZE
    image, label = explorer.catalog.load("d0-0")
    pred = model(image[None])[0].argmax(0)
    c = int(pred.flatten().bincount(minlength=3).argmax())
    name = ["background", "road", "markings"][c]
    valid = label != 255  # ignored pixels are not scored
    tp = (pred == c) & (label == c)
    inter, union = int(tp.sum()), int((((pred == c) | (label == c)) & valid).sum())
    assert view["iou"][name] == pytest.approx(inter / union)
    if inter:
        out = _explain(url, image="d0-0", concept={"kind": "tp", "class": name})
        assert out["concept"]["selected"] == inter


def test_bad_requests_get_one_line_and_the_server_keeps_serving(server, folders):
    url, _, _ = server
    root, pics, secret, _ = folders
    bad = [
        ("/api/images/nope", None, 404, "unknown image id"),
        ("/api/images/nope/image.png", None, 404, "unknown image id"),
        ("/api/explain", {"image": "nope", "concept": {"kind": "pixel", "y": 1, "x": 1}}, 404,
         "unknown image id"),
        ("/api/explain", {"image": "d0-0", "concept": {"kind": "pixel", "y": 64, "x": 3}}, 400,
         "outside the 64x96 image"),
        ("/api/explain", {"image": "d0-0", "concept": {"kind": "pixel", "y": -1, "x": 3}}, 400,
         "outside"),
        ("/api/explain", {"image": "d0-0", "concept": {"kind": "pixel", "y": "a", "x": 3}}, 400,
         "must be an integer"),
        ("/api/explain", {"image": "d0-0", "concept": {"kind": "mask", "mask": [[6000, 500]]}},
         400, "outside"),
        ("/api/explain", {"image": "d0-0", "rule": "bogus",
                          "concept": {"kind": "pixel", "y": 1, "x": 1}}, 400, "bogus"),
        ("/api/explain", {"image": "d0-0", "method": "magic",
                          "concept": {"kind": "pixel", "y": 1, "x": 1}}, 400, "unknown method"),
        ("/api/explain", {"image": "d1-0", "concept": {"kind": "tp", "class": "road"}}, 400,
         "needs a label"),
        ("/api/explain", b"{not json", 400, "not valid JSON"),
        ("/api/explain", {"image": "d0-0", "concept": {"kind": "mask", "mask": "abc"}}, 400,
         "a mask is a list of [start, length] runs"),
        ("/api/explain", {"image": "d0-0", "concept": {"kind": "mask", "mask": []}}, 400,
         "the mask is empty"),
        ("/api/compare", {"a": "d0-0", "b": "d1-0", "concept": {"kind": "tp", "class": "road"}},
         400, "image b (d1-0): "),
        ("/api/results/0123456789ab/pixels.npy", None, 404, "unknown or expired result"),
        ("/api/open", {"path": "../secret.png"}, 403, "refused"),
        ("/api/open", {"path": str(secret)}, 403, "refused"),
        ("/api/open", {"path": "link.png"}, 403, "refused"),  # a symbolic link out
        ("/api/open", {"path": "../../../../../../etc/passwd"}, 403, "refused"),
        ("/api/open", {"path": "missing.png"}, 404, "no such file"),
        # a file that is no picture was listed, then failed on every request for it
        ("/api/open", {"path": "notes.txt"}, 400, "cannot read image"),
        ("/api/open", {"path": 5}, 400, "path must be a string"),
        ("/static/../../pyproject.toml", None, 404, "not found"),
        ("/static/%2e%2e/%2e%2e/pyproject.toml", None, 404, "not found"),
        ("/static/..%2f..%2fcatalog.py", None, 404, "not found"),
    ]
    (pics / "notes.txt").write_text("not a picture")
    for path, body, code, words in bad:
        status, out = request(f"{url}{path}", body)
        assert status == code, (path, out)
        assert isinstance(out, dict) and words in out["error"], (path, out)
        assert "\n" not in out["error"] and "Traceback" not in out["error"]
        _alive(url)
    # another site's page: a text/plain post (no preflight) and a foreign Host header
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"{url}/api/open", data=b'{"path": "a.png"}',
                                 headers={"Content-Type": "text/plain"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 400 and b"must be JSON" in err.value.read()
    req = urllib.request.Request(f"{url}/api/info", headers={"Host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 400
    _alive(url)
    # uploads: a corrupt file, an empty one, one over the limit; then a good one
    for raw, code, words in ((b"\x89PNG\r\n\x1a\n garbage", 400, "cannot read image"),
                             (b"", 400, "empty"), (b"0" * 200_001, 413, "over the limit")):
        status, out = request(f"{url}/api/upload?name=x.png", raw=raw)
        assert status == code and words in out["error"], out
        assert "/tmp" not in out["error"] and "segscope-explore-" not in out["error"]
        _alive(url)
    good = (pics / "a.png").read_bytes()
    status, item = request(f"{url}/api/upload?name=mine.png", raw=good)
    assert status == 200 and item["group"] == "uploads"
    out = _explain(url, image=item["id"], concept={"kind": "pixel", "y": 47, "x": 63})
    assert (out["height"], out["width"]) == SIZE  # resized as every image
    # a file under the folder opens
    status, item = request(f"{url}/api/open", {"path": "a.png"})
    assert status == 200 and item["name"] == "a.png"


def test_diagnosis_walk_and_refusals(server, folders):
    url, _, _ = server
    _, pics, _, _ = folders
    status, listing = request(f"{url}/api/images")
    assert status == 200
    walk = listing["diagnosis"]
    assert [w["name"] for w in walk] == ["b.png", "a.png"]  # most likely to fail first
    assert walk[0]["failure_score"] == pytest.approx(0.9)
    assert any("1 of 3 real image(s) not served" in n and str(pics) in n
               for n in listing["notes"])
    names = {i["name"] for i in listing["items"]}
    assert "secret.png" not in names and "link.png" not in names


def test_feature_separation_sums_to_the_heatmap_and_cancels(server):
    url, explorer, _ = server
    out = _explain(url, image="d0-0", concept={"kind": "pixel", "y": 20, "x": 40})
    status, job = request(f"{url}/api/results/{out['id']}/separate",
                          {"layer": "conv2_1", "top": "all"})
    assert status == 200 and job["total"] == 8
    j = explorer.job(job["id"])
    for _ in range(600):
        if j.status != "running":
            break
        threading.Event().wait(0.05)
    assert j.status == "done"
    _, allmaps = request(f"{url}/api/jobs/{job['id']}/feature/all.npy")
    _, pixels = request(f"{url}/api/results/{out['id']}/pixels.npy")
    # SegNet is a chain: the separated maps of all channels add up to the whole map
    np.testing.assert_allclose(npy(allmaps).sum(0), npy(pixels), rtol=1e-4, atol=1e-6)
    status, png = request(f"{url}/api/jobs/{job['id']}/feature/0.png")
    assert status == 200 and png[:4] == b"\x89PNG"
    # cancel: the job stops between two batches of channels
    request(f"{url}/api/results/{out['id']}/layers.json")  # the fv of every layer, first
    with explorer._lock:  # the job waits for the model: cancel arrives before its 2nd batch
        status, job = request(f"{url}/api/results/{out['id']}/separate",
                              {"layer": "conv3_1", "top": "all"})
        status, _ = request(f"{url}/api/jobs/{job['id']}/cancel", {})
        assert status == 200
    j = explorer.job(job["id"])
    for _ in range(600):
        if j.status != "running":
            break
        threading.Event().wait(0.05)
    assert j.status == "cancelled" and j.done < 16
    status, err = request(f"{url}/api/jobs/{job['id']}/feature/15.png")
    assert status == 404 and "not separated" in err["error"]


def test_compare_two_images(server):
    url, _, _ = server
    concept = {"kind": "pixel", "y": 20, "x": 30, "class": "road"}
    status, same = request(f"{url}/api/compare", {"a": "d0-0", "b": "d0-0", "concept": concept})
    assert status == 200
    assert all(d["cosine"] == pytest.approx(0, abs=1e-6) and d["js"] == pytest.approx(0, abs=1e-6)
               for d in same["divergence"])
    status, two = request(f"{url}/api/compare", {"a": "d0-0", "b": "d0-1", "concept": concept})
    assert status == 200 and two["b"]["concept"]["class"] == "road"
    assert len(two["divergence"]) == 37
    assert any(d["js"] > 0 for d in two["divergence"])
    assert all(0 <= d["js"] <= 1 and 0 <= d["cosine"] <= 2 for d in two["divergence"])


def test_cli_without_extra_and_bad_input(capsys, monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "starlette" else real(name, *a))
    code, _, err = run_cli(["explore", "-c", tmp_path / "m.safetensors"], capsys)
    assert code == 2 and err.strip() == \
        'segscope: error: segscope explore needs its web stack: pip install -e ".[explore]"'
    monkeypatch.undo()
    code, _, err = run_cli(["explore", "-c", tmp_path / "missing.safetensors"], capsys)
    assert code == 2 and err.startswith("segscope: error:") and len(err.strip().splitlines()) == 1
    code, out, _ = run_cli(["explore", "--help"], capsys)
    assert code == 0 and "--diagnosis" in out and "127.0.0.1" in out


def test_real_dataset_scored_on_road_surface(camvid_root, tmp_path):
    """CamVid (no markings class): listed with labels, IoU on the road surface, and a
    diagnosis row pointing at one of its images opens that very item, with its label."""
    first = Catalog([str(camvid_root / "val.txt")], size=SIZE).items["d0-0"]
    diag = tmp_path / "diag"
    diag.mkdir()
    (diag / "images.csv").write_text(f"dataset,image,path,failure_score,iou\n"
                                     f"real,{first.name},{first.path},0.5,0.4\n")
    catalog = Catalog([str(camvid_root / "val.txt")], diagnosis=diag, size=SIZE)
    explorer = Explorer(tiny_model(), catalog)
    assert [w["id"] for w in catalog.diagnosis] == ["d0-0"] and not catalog.notes
    view = explorer.view("d0-0")
    assert view["has_label"] and view["scored_on"].startswith("road surface")
    assert set(view["iou"]) == {"background", "road surface"} and view["failure_score"] == 0.5
    image, label = catalog.load("d0-0")
    pred = explorer.scores("d0-0").argmax(0)
    valid = label != 255
    road_p, road_l = (pred >= 1) & valid, (label >= 1) & valid
    assert view["iou"]["road surface"] == pytest.approx(
        int((road_p & road_l).sum()) / int((road_p | road_l).sum()))
    back_p, back_l = (pred == 0) & valid, (label == 0) & valid
    assert view["iou"]["background"] == pytest.approx(
        int((back_p & back_l).sum()) / int((back_p | back_l).sum()))


def test_mask_runs_too_large_for_an_integer_are_refused_without_a_warning():
    """A start of 1e30 was refused, but only after a cast that warned in the server log."""
    import warnings

    from segscope.errors import SegscopeError
    from segscope.explore.engine import _decode_mask

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for runs in ([[1e30, 1]], [[0, 1e30]], [[-1, 2]], [[5, 2]]):
            with pytest.raises(SegscopeError, match="outside the 2x3 image"):
                _decode_mask(runs, 2, 3)
        assert _decode_mask([[1, 2], [5, 1]], 2, 3).tolist() == [[False, True, True],
                                                                 [False, False, True]]
