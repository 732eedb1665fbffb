"""Class comparison (§9.9, fig 9.11-9.12): each feature as the point of its feature
values for three classes, raw and scaled to unit length (eq 9.4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import analysis as A
from ..errors import SegscopeError
from .base import Analysis, Section
from .context import Sample, StudyContext


@dataclass
class ClassComparisonData:
    layer: str
    classes: list[str]
    concepts: dict[str, str]
    specific: dict[str, list[int]]


CAPTION = """\
Class comparison (§9.9, fig 9.11-9.12): each feature of <code>{{ d.layer }}</code> as the \
point of its feature values for the true positives of {{ d.classes|join(", ") }}, raw \
(left) and scaled to unit length (eq 9.4, right); colour = the class of its largest \
component. Features most specific to each class: \
{% for c, ks in d.specific.items() %}{{ c }}: {{ ks|join(", ") if ks else "none" }}\
{% if not loop.last %}; {% endif %}{% endfor %}."""


class ClassComparison(Analysis):
    key = "class_comparison"
    label = "classes"
    data = ClassComparisonData
    sections = (Section("class_comparison", "Class comparison (§9.9)", CAPTION),)

    def run(self, ctx: StudyContext) -> ClassComparisonData:
        from ..explain import lrp
        from ..viz.figures import class_scatter_figure

        names, layer = ctx.names, ctx.settings.compare_layer
        concepts, text, notes = class_concepts(ctx.synthetic, names)
        for n in notes:
            ctx.note(n)
        present = [n for n in names if n in concepts]
        results = lrp(ctx.model, ctx.synthetic.image, [concepts[n] for n in present],
                      rule=ctx.settings.rule, state=ctx.state(), keep=[layer])
        fv = {n: A.feature_values(r.layers[layer])
              for n, r in zip(present, results, strict=True)}
        width = next(iter(fv.values())).size
        for n in names:
            fv.setdefault(n, np.zeros(width))
        axes = comparison_axes(names)
        points = A.class_points({n: fv[n] for n in axes})
        unit = A.unit_points(points)
        ctx.save_figure("class_comparison", class_scatter_figure(points, unit, axes, layer),
                        "class_comparison.png")
        ctx.save_table(
            "class_comparison", "class_comparison.csv",
            ["feature", *[f"fv_{n}" for n in axes], *[f"unit_{n}" for n in axes]],
            [[k, *map(float, points[k]), *map(float, unit[k])] for k in range(points.shape[0])])
        return ClassComparisonData(layer=layer, classes=axes, concepts=text,
                                   specific=A.specific_features(points, axes))


def class_concepts(s: Sample, names: list[str]):
    """One concept per class for §9.9: its true positives; failing that its labelled
    pixels; failing that the class is left out (its feature values drawn as 0)."""
    from ..explain import Concept

    concepts, text, notes = {}, {}, []
    pred = s.prediction
    for k, n in enumerate(names):
        tp = (pred == k) & (s.label == k)
        if bool(tp.any()):
            concepts[n] = Concept.mask(k, tp, assign="score")
            text[n] = f"{int(tp.sum())} true positives"
        elif bool((s.label == k).any()):
            concepts[n] = Concept.mask(k, s.label == k, assign="score")
            text[n] = f"{int((s.label == k).sum())} labelled pixels (no true positives)"
            notes.append(f"Class comparison: the model predicts no true positives of {n!r} "
                         f"in {s.name}; its labelled pixels are used instead.")
        else:
            text[n] = "absent"
            notes.append(f"Class comparison: {s.name} has no {n!r} pixels; its feature "
                         "values are drawn as 0.")
    if not concepts:
        raise SegscopeError(f"no class has any pixel in {s.name}")
    return concepts, text, notes


def comparison_axes(names: list[str]) -> list[str]:
    """Three classes for the 3-D plot, in the thesis's order (road, markings, background)."""
    preferred = [n for n in ("road", "markings", "background") if n in names]
    rest = [n for n in names if n not in preferred]
    axes = (preferred + rest)[:3]
    if len(axes) < 3:
        raise SegscopeError("the class comparison needs a model with at least 3 classes")
    return axes
