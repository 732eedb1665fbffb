"""Are the study's explanations faithful? Region perturbation on the study's images."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Analysis, Section, Table
from .context import StudyContext

#: Methods scored in the study; ``segscope faithfulness`` compares every method and rule.
STUDY_METHODS = ("lrp", "gradcam", "gradxinput", "random", "edge")
PATCH = 8
BASELINE = "mean"


@dataclass
class FaithfulnessRow:
    method: str
    images: int
    aopc_morf: float
    aopc_morf_lo: float
    aopc_morf_hi: float
    abpc: float


@dataclass
class FaithfulnessData:
    images: int
    steps: int
    patch: int
    baseline: str
    rows: list[FaithfulnessRow]
    best: str
    per_image: dict[str, dict[str, float]]  # image name -> method -> AOPC MoRF


CAPTION = """\
Region perturbation (Samek et al. 2017) on {{ d.images }} image(s) of the study, for the \
true positives of the class: each method's {{ d.patch }}x{{ d.patch }} patches are replaced \
by the image's {{ d.baseline }} colour most relevant first (MoRF) or least relevant first \
(LeRF), or put back into it most relevant first (insertion), in {{ d.steps }} steps; the \
curves are means of the concept's score relative to its unperturbed value. Highest AOPC \
MoRF (the fastest drop): <code>{{ d.best }}</code>. The random and edge maps ignore the \
model and are the floor; <code>segscope faithfulness</code> compares every method and LRP \
rule, with sanity checks."""


def _rows(d: FaithfulnessData) -> list[list[str]]:
    from ..html import num

    return [[r.method, str(r.images),
             f"{num(r.aopc_morf)} [{num(r.aopc_morf_lo)}, {num(r.aopc_morf_hi)}]",
             num(r.abpc)] for r in d.rows]


class Faithfulness(Analysis):
    key = "faithfulness"
    data = FaithfulnessData
    sections = (Section("faithfulness", "Are the explanations faithful? (region perturbation)",
                        CAPTION, Table(("method", "images", "AOPC MoRF [95 %]", "ABPC"),
                                       _rows)),)

    def run(self, ctx: StudyContext) -> FaithfulnessData:
        from ..faithfulness import (
            aopc_table,
            cli_concept,
            evaluate_image,
            label_of,
            mean_curves,
            method_labels,
        )
        from ..viz.faithfulness import curves_figure

        s = ctx.settings
        steps = 5 if s.quick else 10
        pairs = method_labels(STUDY_METHODS, [str(s.rule)])
        labels = [label_of(m, r) for m, r in pairs]
        samples = list({id(x): x for x in (ctx.synthetic, ctx.best, ctx.worst)
                        if x is not None}.values())
        results = []
        for i, sample in enumerate(samples):
            concept = cli_concept(ctx.model, sample.image, sample.label, "tp", ctx.cls, "score")
            if concept is None:
                ctx.note(f"Faithfulness: {sample.name} has no true positives of "
                         f"{ctx.names[ctx.cls]!r}; it is left out.")
                continue
            results.append(evaluate_image(ctx.model, sample.image, concept, pairs, patch=PATCH,
                                          steps=steps, baseline=BASELINE, seed=s.seed + i,
                                          name=sample.name))
        table = aopc_table(results, labels, s.seed)
        ctx.save_figure("faithfulness", curves_figure(
            {"study images": mean_curves(results, labels)}, BASELINE, PATCH),
            "faithfulness.png")
        columns = ["method", "images", "aopc_morf", "aopc_morf_lo", "aopc_morf_hi", "abpc"]
        ctx.save_table("faithfulness", "faithfulness.csv", columns,
                       [[r[c] for c in columns] for r in table])
        rows = [FaithfulnessRow(**{c: r[c] for c in columns}) for r in table]
        ranked = [r for r in rows if r.aopc_morf == r.aopc_morf]
        best = max(ranked, key=lambda r: r.aopc_morf).method if ranked else "n/a"
        per_image = {r.name: {k: v["aopc_morf"] for k, v in r.summaries.items()}
                     for r in results}
        return FaithfulnessData(images=len(results), steps=steps, patch=PATCH,
                                baseline=BASELINE, rows=rows, best=best, per_image=per_image)
