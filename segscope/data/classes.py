"""Class schemes."""

from __future__ import annotations

#: The project's three-class road scheme (SPEC §1): index = label id.
ROAD3: tuple[str, str, str] = ("background", "road", "markings")
BACKGROUND, ROAD, MARKINGS = 0, 1, 2
#: Label id of pixels that are not scored.
IGNORE = 255

#: Display colours (RGB) for ROAD3 predictions and overlays.
ROAD3_COLOURS: tuple[tuple[int, int, int], ...] = ((40, 40, 40), (128, 64, 128), (255, 220, 0))
