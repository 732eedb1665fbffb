"""The images a study explains: image, label and prediction of each (fig 9.2, 9.13)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import Analysis, Section
from .context import Sample, StudyContext


@dataclass
class ImageInfo:
    name: str
    source: str
    iou: float | None
    size: list[int]


@dataclass
class ImagesData:
    synthetic: ImageInfo
    real_best: ImageInfo | None
    real_worst: ImageInfo | None
    scanned: int


CAPTION = """\
The images the study explains, with their labels and the model's prediction. \
Synthetic: {{ d.synthetic.name }} (road-surface IoU {{ d.synthetic.iou|pct }}).
{%- for im, word in ((d.real_best, "best"), (d.real_worst, "worst")) if im %} \
Real, segmented {{ word }} among {{ d.scanned }} scanned: {{ im.name }} (IoU {{ im.iou|pct }}).
{%- endfor %}"""


class Images(Analysis):
    key = "images"
    data = ImagesData
    sections = (Section("images", "Images", CAPTION),)

    def run(self, ctx: StudyContext) -> ImagesData:
        from ..data.classes import ROAD3_COLOURS
        from ..viz.figures import images_figure

        syn, best, worst = ctx.synthetic, ctx.best, ctx.worst
        rows = [_row(syn, f"synthetic: {syn.name}")]
        if best is not None:
            rows.append(_row(best, f"real, best: {best.name}"))
            if worst is not best:
                rows.append(_row(worst, f"real, worst: {worst.name}"))
        n = len(ctx.names)
        colours = list(ROAD3_COLOURS) if n == 3 else \
            [(int(255 * i / max(n - 1, 1)),) * 3 for i in range(n)]
        ctx.save_figure("images", images_figure(rows, colours), "images.png")
        return ImagesData(
            synthetic=_info(syn, ctx.synthetic_spec),
            real_best=_info(best, ctx.real) if best is not None else None,
            real_worst=_info(worst, ctx.real) if worst is not None else None,
            scanned=len(ctx.real_samples),
        )


def _info(s: Sample, source: Any) -> ImageInfo:
    return ImageInfo(name=s.name, source=str(source), iou=s.iou, size=list(s.image.shape[1:]))


def _row(s: Sample, title: str) -> dict[str, Any]:
    iou = f" (IoU {100 * s.iou:.1f} %)" if s.iou is not None else ""
    return {"title": title + iou, "image": s.image, "label": s.label, "prediction": s.prediction}
