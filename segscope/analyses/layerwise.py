"""Layer-wise propagation (§9.4, fig 9.4) and the pixel relevance of the main concept."""

from __future__ import annotations

from dataclasses import dataclass

from .. import analysis as A
from .base import Analysis, Section
from .context import StudyContext


@dataclass
class LayerwiseData:
    concept: str
    output_total: float
    pixel_total: float
    share_reaching_pixels: float
    dropped_share: float | None
    totals: dict[str, float]


OVERLAY = """\
Relevance of each pixel (eq 8.1) for {{ d.concept }}, on its own blue-white-red scale \
(eq 8.2) and blended over the image. Red pixels speak for the class. The pixels receive \
{{ d.share_reaching_pixels|pct }} of the output relevance; the rest was absorbed by the \
biases (§9.11)
{%- if d.dropped_share %} or left the graph before the pixels \
({{ d.dropped_share|pct }}){% endif %}."""

LAYERWISE = """\
Layer-wise propagation (§9.4, fig 9.4): the layer-sum map Σ_k R(k,y,x) (eq 9.1) of all \
{{ d.totals|length }} layers, from the output <code>conv1_1_D</code> to the pixels \
<code>data</code>, each on its own scale; titles give the layer's total relevance. The \
output starts with {{ d.output_total|num }} and the pixels end with \
{{ d.pixel_total|num }} ({{ d.share_reaching_pixels|pct }})."""


class Layerwise(Analysis):
    key = "layerwise"
    label = "layer-wise"
    data = LayerwiseData
    needs = frozenset({"main_layers"})
    sections = (Section("overlay", "Pixel relevance", OVERLAY),
                Section("layerwise", "Layer-wise propagation (§9.4)", LAYERWISE))

    def run(self, ctx: StudyContext) -> LayerwiseData:
        from ..viz.figures import layerwise_figure, pixel_overlay_figure

        main = ctx.main()
        order = list(reversed(ctx.model.layer_names))
        totals = {n: float(main.layers[n].sum()) for n in order}
        output_total, pixel_total = float(main.output_total), float(main.pixels.sum())
        maps = {n: A.layer_sum(main.layers[n]) for n in order}
        text = ctx.main_concept
        ctx.save_figure("overlay", pixel_overlay_figure(ctx.synthetic.image, main.pixels, text),
                        "overlay.png")
        ctx.save_figure("layerwise", layerwise_figure(
            maps, totals, title=f"LRP {ctx.settings.rule}: {text}"),
            "layerwise.png")
        return LayerwiseData(
            concept=text, output_total=output_total, pixel_total=pixel_total,
            share_reaching_pixels=A.share_reaching_input(pixel_total, output_total),
            dropped_share=A.share_reaching_input(float(main.dropped), output_total),
            totals=totals)

