"""Feature maps (§9.5, fig 9.5) and feature values (§9.6, eq 9.3, fig 9.6)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import analysis as A
from .base import Analysis, Section
from .context import StudyContext


@dataclass
class FeatureValue:
    feature: int
    fv: float


@dataclass
class FeatureValuesData:
    layer: str
    channels: int
    top: list[FeatureValue]
    bottom: list[FeatureValue]
    top_share_features: int
    top_share: float
    max_fv_per_layer: dict[str, float]


MAPS = """\
Relevance of single features of <code>{{ d.layer }}</code> on one global scale (eq 9.2, \
fig 9.5): the features with the highest feature values, then the lowest. Feature \
{{ d.top[0].feature }} holds the most, fv = {{ d.top[0].fv|fixed(2) }}, i.e. \
{{ d.top[0].fv|fixed(2) }} times an equal share of the layer's relevance."""

VALUES = """\
Feature values (eq 9.3) of the {{ d.channels }} features of <code>{{ d.layer }}</code>: \
each feature's share of the layer's relevance times the number of features, so they sum \
to the number of features and 1 is an average share. Highest: \
{% for t in d.top[:5] %}{{ t.feature }} ({{ t.fv|fixed(2) }}){% if not loop.last %}, {% endif %}\
{% endfor %}. The top {{ d.top_share_features }} features hold {{ d.top_share|pct }} of the \
layer's relevance."""

ALL_VALUES = """\
Feature values of every layer (fig 9.6 for all of them). A high peak means few features \
carry the decision in that layer; the most peaked layers here are \
{% for k, v in (d.max_fv_per_layer|dictsort(by="value", reverse=true))[:3] %}\
<code>{{ k }}</code> (max {{ v|fixed(1) }}){% if not loop.last %}, {% endif %}{% endfor %}."""


class Features(Analysis):
    key = "feature_values"
    label = "features"
    data = FeatureValuesData
    needs = frozenset({"main_layers"})
    sections = (
        Section("feature_maps", "Relevance of single features (§9.5)", MAPS),
        Section("feature_values", "Feature values (§9.6)", VALUES),
        Section("all_feature_values", "Feature values of all layers (§9.6)", ALL_VALUES),
    )

    def run(self, ctx: StudyContext) -> FeatureValuesData:
        from ..viz import figures as F

        main, layer, layers = ctx.main(), ctx.settings.layer, ctx.model.layer_names
        profiles = A.layer_profiles({n: main.layers[n] for n in layers})
        fv = profiles[layer]
        rank = A.rank_features(fv)
        ctx.save_figure("feature_maps", F.feature_maps_figure(main.layers[layer], fv, layer),
                        "feature_maps.png")
        ctx.save_figure("feature_values", F.feature_values_figure(fv, layer),
                        "feature_values.png")
        ctx.save_figure("all_feature_values", F.all_feature_values_figure(profiles),
                        "all_feature_values.png")
        ctx.save_table(
            "feature_values", "feature_values.csv", ["layer", "feature", "fv", "relevance"],
            [[n, k, float(v), float(t)] for n in layers
             for k, (v, t) in enumerate(zip(profiles[n], A.channel_totals(main.layers[n]),
                                            strict=True))])
        n_top = max(1, int(np.ceil(0.1 * fv.size)))
        return FeatureValuesData(
            layer=layer, channels=int(fv.size),
            top=[FeatureValue(int(k), float(fv[k])) for k in rank[:10]],
            bottom=[FeatureValue(int(k), float(fv[k])) for k in rank[::-1][:5]],
            top_share_features=n_top,
            top_share=float(fv[rank[:n_top]].sum() / fv.size),
            max_fv_per_layer={n: float(p.max()) for n, p in profiles.items()},
        )
