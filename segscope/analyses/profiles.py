"""Synthetic vs real (§9.10, fig 9.14-9.16): feature-value profiles of single pixels
compared layer by layer (two pixels of the synthetic image; a synthetic and a real one)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import analysis as A
from .base import Analysis, Section
from .context import Sample, StudyContext, two_pixels

#: Layers drawn in the profile figure (fig 9.14-9.16 show nine layers).
PROFILE_LAYERS = ("conv1_2", "conv2_1", "conv3_1", "conv4_1", "conv5_3",
                  "conv5_1_D", "conv4_1_D", "conv3_1_D", "conv2_1_D")


@dataclass
class Divergence:
    cosine: float
    js: float


@dataclass
class Comparison:
    description: str
    mean_cosine: float
    mean_js: float
    encoder_js: float
    decoder_js: float
    per_layer: dict[str, Divergence]


@dataclass
class SyntheticVsRealData:
    comparisons: dict[str, Comparison]


PROFILES = """\
Feature-value profiles of single road pixels (§9.10, fig 9.14-9.16), overlaid for a few \
layers: {{ d.comparisons.values()|map(attribute="description")|join("; ") }}."""

DIVERGENCE = """\
How far the feature-value profiles of two explanations are, layer by layer (0 = the same \
profile): {% for name, c in d.comparisons.items() %}{{ name }}: mean 1 − cosine \
{{ c.mean_cosine|num(2) }}, mean Jensen-Shannon {{ c.mean_js|num(2) }} (encoder \
{{ c.encoder_js|num(2) }}, decoder {{ c.decoder_js|num(2) }})\
{% if not loop.last %}; {% endif %}{% endfor %}. The thesis found two pixels of one image \
near-identical, a well-segmented real image different in the shallow layers, a badly \
segmented one in the deep layers."""


class SyntheticVsReal(Analysis):
    key = "synthetic_vs_real"
    label = "synthetic vs real"
    data = SyntheticVsRealData
    sections = (
        Section("profiles", "Synthetic vs real: profiles (§9.10)", PROFILES),
        Section("divergence", "Synthetic vs real: divergence per layer (§9.10)", DIVERGENCE),
    )

    def run(self, ctx: StudyContext) -> SyntheticVsRealData:
        from ..explain import Concept, lrp
        from ..viz.figures import divergence_figure, profiles_figure

        c, names, rule = ctx.cls, ctx.names, ctx.settings.rule
        layers = list(ctx.model.layer_names)
        ya, xa, yb, xb = ctx.pixels()
        prof_a = ctx.pixel_a_profiles()
        pix_b = lrp(ctx.model, ctx.synthetic.image, Concept.pixel(c, yb, xb), rule=rule,
                    keep="all", state=ctx.state())
        prof = {"synthetic A": prof_a, "synthetic B": A.layer_profiles(pix_b.layers)}
        del pix_b
        comparisons = {"two synthetic pixels": (
            f"synthetic pixels ({ya}, {xa}) and ({yb}, {xb})",
            A.profile_divergence(prof_a, prof["synthetic B"], layers))}
        best, worst = ctx.best, ctx.worst
        for key, sample, word in (("best", best, "well"), ("worst", worst, "badly")):
            if sample is None or (key == "worst" and worst is best):
                continue
            where = real_pixel(sample, c, names)
            if where is None:
                ctx.note(f"The {key} real image {sample.name} has no {names[c]!r} pixel in "
                         "its label or prediction; it is left out of the comparison.")
                continue
            ry, rx = where
            expl = lrp(ctx.model, sample.image, Concept.pixel(c, ry, rx), rule=rule,
                       keep="all")
            label = f"real {key}"
            prof[label] = A.layer_profiles(expl.layers)
            del expl
            comparisons[f"synthetic vs {label}"] = (
                f"synthetic pixel ({ya}, {xa}) vs pixel ({ry}, {rx}) of the {word} segmented "
                f"real image {sample.name}",
                A.profile_divergence(prof_a, prof[label], layers))
        div = {k: v[1] for k, v in comparisons.items()}
        ctx.save_figure("profiles", profiles_figure(
            prof, [n for n in PROFILE_LAYERS if n in layers]), "profiles.png")
        ctx.save_figure("divergence", divergence_figure(div, layers), "divergence.png")
        ctx.save_table("divergence", "divergence.csv",
                       ["layer"] + [f"{k} {m}" for k in div for m in ("cosine", "js")],
                       [[n, *[div[k][n][m] for k in div for m in ("cosine", "js")]]
                        for n in layers])
        n_enc = layers.index("pool5") + 1

        def mean(d, key, names) -> float:
            return float(np.mean([d[n][key] for n in names]))

        return SyntheticVsRealData(comparisons={
            k: Comparison(
                description=text, mean_cosine=mean(d, "cosine", layers),
                mean_js=mean(d, "js", layers), encoder_js=mean(d, "js", layers[:n_enc]),
                decoder_js=mean(d, "js", layers[n_enc:]),
                per_layer={n: Divergence(**v) for n, v in d.items()})
            for k, (text, d) in comparisons.items()})


def real_pixel(s: Sample, c: int, names: list[str]) -> tuple[int, int] | None:
    """A pixel of class ``c`` in a real image: a true positive near the centre of mass
    when there is one, else a labelled pixel (a badly segmented image may have none
    predicted), else a predicted one. Road counts markings labels as road surface."""
    surface = {1, 2} if names[c] == "road" else {c}
    in_label = torch.zeros_like(s.label, dtype=torch.bool)
    for k in surface:
        in_label |= s.label == k
    pred = s.prediction == c
    for mask in (pred & in_label, in_label, pred):
        if bool(mask.any()):
            y, x, _, _ = two_pixels(mask)
            return y, x
    return None
