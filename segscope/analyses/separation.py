"""Feature separation (§9.8, fig 9.9): each feature's relevance alone, at the pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import analysis as A
from .base import Analysis, Section, Table
from .context import StudyContext

#: Thesis figure 9.9 threshold: the lit pixels hold this share of the block's relevance.
SEPARATION_SHARE = 0.3


@dataclass
class Separated:
    feature: int
    fv: float
    layer_total: float
    pixel_total: float
    lit_pixels: int


@dataclass
class SeparationData:
    layer: str
    channels: list[int]
    threshold_share: float
    threshold: float | None
    ranking: list[Separated]


CAPTION = """\
{%- set dark = d.ranking|selectattr("lit_pixels", "equalto", 0)|list|length -%}
Feature separation (§9.8, fig 9.9): the relevance of each of {{ d.ranking|length }} \
features of <code>{{ d.layer }}</code> alone, propagated to the pixels, lit from the most \
relevant pixel of the whole block down to a common threshold holding \
{{ d.threshold_share|pct(0) }} of the block's relevance. {{ dark }} of the \
{{ d.ranking|length }} features stay dark. The most important features (by feature \
value) are {{ d.ranking[:5]|map(attribute="feature")|join(", ") }}."""


def _rows(d: SeparationData) -> list[list[str]]:
    return [[r.feature, f"{r.fv:.3f}", f"{r.pixel_total:.4g}", r.lit_pixels]
            for r in d.ranking[:10]]


class Separation(Analysis):
    key = "separation"
    data = SeparationData
    sections = (Section("separation", "Feature separation (§9.8)", CAPTION, Table(
        ("feature", "feature value", "relevance at pixels", "lit pixels"), _rows)),)

    def run(self, ctx: StudyContext) -> SeparationData:
        from ..explain import separate_features
        from ..viz.figures import separation_figure

        cfg, main = ctx.settings, ctx.main()
        layer_relevance = main.layers[cfg.layer]
        fv = A.feature_values(layer_relevance)
        rank = A.rank_features(fv)
        chosen = np.sort(rank if cfg.channels is None else rank[: cfg.channels])
        sep = separate_features(ctx.model, ctx.synthetic.image, main, cfg.layer,
                                channels=[int(k) for k in chosen])
        maps = A.as_numpy(sep.pixels)
        threshold = A.common_threshold(maps, SEPARATION_SHARE)
        layer_totals = A.channel_totals(layer_relevance)
        ranking = [Separated(feature=int(k), fv=float(fv[k]), layer_total=float(layer_totals[k]),
                             pixel_total=float(maps[i].sum()),
                             lit_pixels=int((maps[i] >= threshold).sum()))
                   for i, k in enumerate(chosen)]
        ranking.sort(key=lambda r: -r.fv)
        ctx.save_figure("separation", separation_figure(
            maps, threshold, SEPARATION_SHARE, cfg.layer, fv=fv[chosen], channels=chosen),
            "separation.png")
        ctx.save_table("separation", "separation.csv",
                       ["feature", "fv", "layer_total", "pixel_total", "lit_pixels"],
                       [[r.feature, r.fv, r.layer_total, r.pixel_total, r.lit_pixels]
                        for r in ranking])
        if cfg.channels is not None and cfg.channels < fv.size:
            ctx.note(f"Feature separation covers the {len(chosen)} features of {cfg.layer} "
                     f"with the highest feature values, of {fv.size}.")
        return SeparationData(layer=cfg.layer, channels=[int(k) for k in chosen],
                              threshold_share=SEPARATION_SHARE,
                              threshold=threshold if np.isfinite(threshold) else None,
                              ranking=ranking)
