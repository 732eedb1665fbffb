"""Bias absorption (§9.11): how much of the output relevance reaches the pixels, against
the class probability, and how much each layer's biases absorb."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import analysis as A
from .base import Analysis, Section
from .context import StudyContext

#: Pixel concepts explained together in one LRP pass.
BIAS_BATCH = 16


@dataclass
class BiasData:
    cls: str = field(metadata={"json": "class"})  # ``class`` is a Python keyword
    pixels: int
    images: int
    pearson: float
    spearman: float
    share_min: float | None
    share_median: float | None
    share_max: float | None
    absorbed_share: dict[str, float]


BIAS = """\
Bias absorption (§9.11): for {{ d.pixels }} single-pixel concepts of class {{ d.cls }} on \
{{ d.images }} images, the share of the output relevance that reaches the pixels against \
the class probability at that pixel. The share ranges from {{ d.share_min|pct }} to \
{{ d.share_max|pct }} (median {{ d.share_median|pct }}); correlation with the probability: \
Pearson {{ d.pearson|num(2) }}, Spearman {{ d.spearman|num(2) }}."""

ABSORBED = """\
Relevance absorbed by the biases in each layer for the main concept, as a share of the \
output relevance: {{ d.absorbed_share.values()|sum|pct }} in all; most in \
{% for k, v in d.absorbed_share|largest(3) %}<code>{{ k }}</code> ({{ v|pct }})\
{% if not loop.last %}, {% endif %}{% endfor %}."""


class Bias(Analysis):
    key = "bias"
    data = BiasData
    sections = (Section("bias", "Bias absorption (§9.11)", BIAS),
                Section("absorbed", "Relevance absorbed per layer (§9.11)", ABSORBED))

    def run(self, ctx: StudyContext) -> BiasData:
        from ..explain import Concept, forward_state, lrp
        from ..viz.figures import absorbed_figure, bias_figure

        c, syn, rule = ctx.cls, ctx.synthetic, ctx.settings.rule
        best, worst = ctx.best, ctx.worst
        images = [syn, *([best] if best is not None else []),
                  *([worst] if worst is not None and worst is not best else [])]
        rng = np.random.default_rng(ctx.settings.seed)
        rows = []
        for sample in images:
            h, w = sample.label.shape
            picks = rng.choice(h * w, size=min(ctx.settings.pixels, h * w), replace=False)
            coords = [(int(p // w), int(p % w)) for p in picks]
            probs = sample.probs[c]
            state = ctx.state() if sample is syn else forward_state(ctx.model, sample.image,
                                                                     rule)
            for i in range(0, len(coords), BIAS_BATCH):
                batch = coords[i:i + BIAS_BATCH]
                res = lrp(ctx.model, sample.image, [Concept.pixel(c, y, x) for y, x in batch],
                          rule=rule, state=state)
                for (y, x), r in zip(batch, res, strict=True):
                    rows.append([sample.name, y, x, float(probs[y, x]),
                                 A.share_reaching_input(float(r.pixels.sum()),
                                                        float(r.output_total))])
        prob = np.array([r[3] for r in rows])
        share = np.array([r[4] for r in rows])
        ok = np.isfinite(share)
        pr, sr = A.pearson(prob[ok], share[ok]), A.spearman(prob[ok], share[ok])
        name = ctx.names[c]
        ctx.save_figure("bias", bias_figure(prob[ok], share[ok], pr, sr, name), "bias.png")
        ctx.save_table("bias", "bias.csv", ["image", "y", "x", "probability", "share"], rows)
        main = ctx.main()
        output_total = float(main.output_total)
        absorbed = {n: float(v) / output_total if output_total else 0.0
                    for n, v in main.absorbed.items()}
        ctx.save_figure("absorbed", absorbed_figure(dict(main.absorbed), output_total),
                        "absorbed.png")
        ctx.save_table("absorbed", "absorbed.csv", ["layer", "absorbed", "share_of_output"],
                       [[n, float(v), absorbed[n]] for n, v in main.absorbed.items()])
        return BiasData(
            cls=name, pixels=int(ok.sum()), images=len(images), pearson=pr, spearman=sr,
            share_min=float(share[ok].min()) if ok.any() else None,
            share_median=float(np.median(share[ok])) if ok.any() else None,
            share_max=float(share[ok].max()) if ok.any() else None,
            absorbed_share=absorbed,
        )
