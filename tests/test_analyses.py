"""The study as a list of analyses: the registry, typed section data, strict templates, and
an analysis added the way docs/extending.md says."""

from __future__ import annotations

import re
from dataclasses import dataclass

import jinja2
import pytest
import torch
from _cli import exit_code
from test_study import _tiny_model

import segscope
from segscope._typed import from_json
from segscope.analyses import (
    REGISTRY,
    Analysis,
    Images,
    Section,
    StudyContext,
    StudySettings,
)
from segscope.errors import SegscopeError
from segscope.html import caption_template


def test_registry_keys_and_figures_are_unique_and_complete():
    keys = [a.key for a in REGISTRY]
    assert len(keys) == len(set(keys))
    figures = [s.figure for a in REGISTRY for s in a.sections]
    assert len(figures) == len(set(figures))
    # The report order of the chapter-9 study (thesis §9.4-§9.11).
    assert figures == ["images", "overlay", "layerwise", "feature_maps", "feature_values",
                       "all_feature_values", "switch_off", "separation", "class_comparison",
                       "profiles", "divergence", "bias", "absorbed", "faithfulness"]
    for a in REGISTRY:
        assert a.sections and a.name and isinstance(a.data, type)


def test_a_mistyped_key_in_a_caption_raises():
    from segscope.analyses.layerwise import LayerwiseData

    d = LayerwiseData(concept="c", output_total=2.0, pixel_total=1.0,
                      share_reaching_pixels=0.5, dropped_share=None, totals={"data": 1.0})
    assert caption_template("{{ d.share_reaching_pixels|pct }}").render(d=d) == "50.0 %"
    with pytest.raises(jinja2.UndefinedError):
        caption_template("{{ d.share_reaching_pixel|pct }}").render(d=d)
    with pytest.raises(jinja2.UndefinedError):
        caption_template("{{ e.concept }}").render(d=d)


def test_typed_json_names_the_field():
    from segscope.analyses.switch_off import SwitchOffData

    good = {"concept": "c", "pixel": [1, 2], "pixel_shares": {"0.5": 0.1}, "frames": [0.9]}
    assert from_json(SwitchOffData, good, "s").negative_share == 0.0  # a default
    for bad, where in (({**good, "pixel": [1, "2"]}, "s.pixel[1]"),
                       ({**good, "pixel_shares": {"0.5": None}}, "s.pixel_shares.0.5"),
                       ({**good, "frames": 0.9}, "s.frames"),
                       ({**good, "concept": True}, "s.concept")):
        with pytest.raises(SegscopeError, match="^" + re.escape(where) + " must be"):
            from_json(SwitchOffData, bad, "s")
    with pytest.raises(SegscopeError, match="s has no 'pixel'"):
        from_json(SwitchOffData, {k: v for k, v in good.items() if k != "pixel"}, "s")


# -- a toy analysis, registered as docs/extending.md says ----------------------------------------
@dataclass
class RoadShareData:
    share: float
    pixels: int


class RoadShare(Analysis):
    """The share of the synthetic image's pixels predicted as the class."""

    key = "road_share"
    data = RoadShareData
    sections = (Section("road_share", "Predicted share",
                        "The model predicts {{ d.pixels }} pixels ({{ d.share|pct }}) as "
                        "the class."),)

    def run(self, ctx: StudyContext) -> RoadShareData:
        from segscope.viz.figures import new_figure

        pred = ctx.synthetic.prediction == ctx.cls
        fig = new_figure(2, 2)
        fig.add_subplot(1, 1, 1).imshow(pred.numpy())
        ctx.save_figure("road_share", fig, "road_share.png")
        return RoadShareData(share=float(pred.float().mean()), pixels=int(pred.sum()))


@pytest.fixture
def toy_study(tmp_path, monkeypatch):
    from segscope.study import run_study

    ckpt = segscope.save_model(_tiny_model(), tmp_path / "model.safetensors")
    registry = [Images(), RoadShare()]
    monkeypatch.setattr("segscope.analyses.REGISTRY", registry)
    summary = run_study(ckpt, tmp_path / "out", synthetic="synthetic:2:narrow:1",
                        settings=StudySettings(quick=True, size=(64, 96), candidates=2),
                        quiet=True, analyses=registry)
    return tmp_path / "out", summary, ckpt


def test_a_registered_analysis_gets_its_section(toy_study):
    out, summary, ckpt = toy_study
    assert list(summary["figures"]) == ["images", "road_share"]
    # The numbers, recomputed from the chosen image and the model.
    from segscope.data import open_dataset

    index = int(summary["images"]["synthetic"]["name"].rsplit("#", 1)[1])
    image, _ = open_dataset("synthetic:2:narrow:1", size=(64, 96))[index]
    model, _ = segscope.load_model(ckpt)
    with torch.no_grad():
        pred = model(image[None])[0].argmax(0)
    expected = int((pred == 1).sum())
    assert summary["road_share"]["pixels"] == expected
    page = (out / "report.html").read_text()
    assert '<section id="road_share"><h2>Predicted share</h2>' in page
    assert f"The model predicts {expected} pixels ({100 * expected / pred.numel():.1f} %)" in page
    assert page.count('src="data:image/png;base64,') == 2
    # segscope report rebuilds it with the registry alone.
    (out / "report.html").unlink()
    assert exit_code(["report", str(out)]) == 0
    assert (out / "report.html").read_text() == page


def test_a_caption_with_a_mistyped_key_fails_the_report(toy_study, monkeypatch):
    out, _, _ = toy_study
    broken = RoadShare()
    broken.sections = (Section("road_share", "Predicted share", "{{ d.pixles }} pixels"),)
    from segscope.report import write_report

    with pytest.raises(jinja2.UndefinedError, match="pixles"):
        write_report(out, analyses=[Images(), broken])
    # Without the analysis, its figure is still shown, and the page says why it has no text.
    page = write_report(out, analyses=[Images()]).read_text()
    assert page.count('src="data:image/png;base64,') == 2
    assert "No analysis of this segscope version describes the figure &#39;road_share&#39;" \
        in page
