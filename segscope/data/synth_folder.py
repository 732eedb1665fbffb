"""A folder of synthetic scenes on disk (``format: segscope-folder/1``).

:func:`write_dataset` writes ``images/``, ``labels/``, a contact sheet and
``manifest.json``; :func:`segscope.data.open_dataset` reads such a folder back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SegscopeError

#: How many samples the contact sheet shows.
SHEET_SAMPLES = 16


def write_dataset(data, out: Path, progress=lambda it: it, resume: bool = False) -> dict:
    """Write every scene of ``data`` (a :class:`SyntheticRoads`) under ``out``; return the
    manifest. With ``resume``, scenes whose image and label are already there are kept
    (each file is written atomically, so a file that exists is complete)."""
    from PIL import Image

    from .. import __version__
    from .._io import atomic_path, write_json
    from ..viz.contact import contact_sheet
    from .classes import IGNORE, ROAD3

    if out.exists() and not out.is_dir():
        raise SegscopeError(f"--out {out} exists and is not a folder")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    counts = np.zeros(len(ROAD3), np.int64)
    sheet_images, sheet_labels = [], []
    for i in progress(range(len(data))):
        stem = f"{i:06d}"
        img_path, lab_path = out / "images" / f"{stem}.png", out / "labels" / f"{stem}.png"
        if resume and img_path.is_file() and lab_path.is_file():
            from .io import read_label

            label = read_label(lab_path)
            counts += np.bincount(label.ravel(), minlength=len(ROAD3))[: len(ROAD3)]
            if i < SHEET_SAMPLES:
                sheet_images.append(np.asarray(Image.open(img_path).convert("RGB")))
                sheet_labels.append(label)
            continue
        image, label = data.render(i)
        rgb = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
        with atomic_path(img_path) as tmp:
            Image.fromarray(rgb).save(tmp, format="PNG")
        with atomic_path(lab_path) as tmp:
            Image.fromarray(label).save(tmp, format="PNG")
        counts += np.bincount(label.ravel(), minlength=len(ROAD3))[: len(ROAD3)]
        if i < SHEET_SAMPLES:
            sheet_images.append(rgb)
            sheet_labels.append(label)
    contact_sheet(sheet_images, sheet_labels, out / "contact_sheet.png", cols=4)
    total = max(int(counts.sum()), 1)
    manifest = {
        "format": "segscope-folder/1",
        "generator": "segscope.data.synthetic",
        "generator_version": data.settings["generator_version"],
        "segscope_version": __version__,
        "settings": data.settings,
        "count": len(data),
        "size": list(data.size),
        "images": "images",
        "labels": "labels",
        "image_suffix": ".png",
        "label_suffix": ".png",
        "class_names": list(ROAD3),
        "ignore_index": IGNORE,
        "class_pixel_shares": {name: counts[k] / total for k, name in enumerate(ROAD3)},
        "contact_sheet": "contact_sheet.png",
    }
    write_json(out / "manifest.json", manifest)
    return manifest
