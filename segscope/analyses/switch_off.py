"""Switching pixels off (§9.7, fig 9.8): how few pixels hold one pixel's relevance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import analysis as A
from .base import Analysis, Section, Table
from .context import StudyContext

#: Thesis figure 9.8 frames.
SWITCH_OFF_FRAMES = (0.99, 0.9, 0.75, 0.5, 0.3)


@dataclass
class SwitchOffData:
    concept: str
    pixel: list[int]
    pixel_shares: dict[str, float]
    frames: list[float]
    negative_share: float = 0.0


CAPTION = """\
Switch-off (§9.7, fig 9.8) for {{ d.concept }}: pixels are switched off from the least \
relevant up; the curve shows the relevance kept against the pixels still on, the frames \
the pixels still on at each share (the rest dark). \
{% for k, v in d.pixel_shares.items() %}{{ k|float|pct(0) }} of the relevance sits in \
{{ v|pct }} of the pixels{% if not loop.last %}; {% endif %}{% endfor %}. Shares are of \
the positive relevance; {{ d.negative_share|pct }} of the absolute pixel relevance is \
negative."""


def _rows(d: SwitchOffData) -> list[list[str]]:
    from ..html import pct

    return [[pct(float(k), 0), pct(v)] for k, v in d.pixel_shares.items()]


class SwitchOff(Analysis):
    key = "switch_off"
    label = "switch-off"
    data = SwitchOffData
    sections = (Section("switch_off", "Switching pixels off (§9.7)", CAPTION,
                        Table(("relevance kept", "pixels needed"), _rows)),)

    def run(self, ctx: StudyContext) -> SwitchOffData:
        from ..viz.figures import switch_off_figure

        ya, xa, _, _ = ctx.pixels()
        pix = ctx.pixel_a()
        curve = A.switch_off_curve(pix.pixels)
        ctx.save_figure("switch_off", switch_off_figure(curve, pix.pixels, SWITCH_OFF_FRAMES),
                        "switch_off.png")
        idx = np.unique(np.linspace(0, curve.pixel_share.size - 1, 201).astype(int))
        ctx.save_table(
            "switch_off", "switch_off.csv", ["pixel_share_on", "relevance_share_kept"],
            [[float(curve.pixel_share[i]), float(curve.relevance_share[i])] for i in idx])
        return SwitchOffData(
            concept=f"the {ctx.names[ctx.cls]!r} score of pixel ({ya}, {xa})",
            pixel=[ya, xa],
            pixel_shares={f"{s:g}": curve.pixels_holding(s) for s in A.REPORTED_SHARES},
            frames=list(SWITCH_OFF_FRAMES),
            negative_share=A.negative_share(pix.pixels),
        )
