"""report.html renders in a real browser (headless Chromium) with every image loaded.

Skips when no Chromium is installed (Debian: ``apt-get install -y chromium``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)

pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium found (apt-get install -y chromium) for the browser test"
)

sys.path.insert(0, os.path.dirname(__file__))
import test_study  # noqa: E402

# The study folder of test_study, made again for this module (module-scoped fixtures).
study_folder = test_study.study_dir

#: Appended to a copy of the report (the report itself has no script): on load, count the
#: images that decoded and write the count into the DOM for --dump-dom to print.
PROBE = (
    '<script>window.addEventListener("load",function(){var im=document.images,ok=0;'
    "for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}"
    'var d=document.createElement("div");d.id="probe";'
    'd.textContent="IMAGES "+ok+"/"+im.length+" W "+document.images[0].naturalWidth;'
    "document.body.appendChild(d);});</script></body>"
)


def _chromium(args: list[str], profile) -> subprocess.CompletedProcess:
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_every_image_of_the_report_loads(study_folder, tmp_path):
    out, _, _ = study_folder
    page = (out / "report.html").read_text()
    n_images = page.count("<img ")
    assert n_images >= 10
    # Copy the page alone into an empty folder: nothing beside it can be used.
    probe = tmp_path / "alone" / "probe.html"
    probe.parent.mkdir()
    probe.write_text(page.replace("</body>", PROBE))
    result = _chromium(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                       tmp_path / "profile")
    found = re.search(r"IMAGES (\d+)/(\d+) W (\d+)", result.stdout)
    assert found, f"no probe output; stderr tail: {result.stderr[-500:]}"
    ok, total, width = map(int, found.groups())
    assert total == n_images
    assert ok == total, f"only {ok} of {total} images loaded"
    assert width > 100


def test_report_screenshot_is_not_blank(study_folder, tmp_path):
    from PIL import Image

    out, _, _ = study_folder
    shot = tmp_path / "shot.png"
    _chromium(["--window-size=1000,1400", f"--screenshot={shot}",
               (out / "report.html").as_uri()], tmp_path / "profile")
    assert shot.is_file()
    with Image.open(shot) as img:
        colours = img.convert("RGB").resize((100, 140)).getcolors(maxcolors=100000)
    assert colours is not None and len(colours) > 50  # text and figures, not a blank page
