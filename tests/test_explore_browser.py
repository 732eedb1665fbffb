"""The explore page in a real browser (headless Chromium through Selenium): click a pixel
and the heatmap served is the Python API's LRP; brush a mask; switch to Grad-CAM; a bad
request shows its one-line message in the page.

Skips when Selenium, Chromium or chromedriver is missing (Debian:
``apt-get install -y chromium chromium-driver``; ``pip install -e ".[test]"``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile

import numpy as np
import pytest

pytest.importorskip("starlette", reason='the explore extra is not installed '
                    '(pip install -e ".[explore]")')
pytest.importorskip("uvicorn", reason="the explore extra is not installed")
pytest.importorskip("selenium", reason='selenium is not installed (pip install -e ".[test]")')

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(b)), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    BROWSER is None or DRIVER is None,
    reason="no chromium and chromedriver found (apt-get install -y chromium chromium-driver)")

sys.path.insert(0, os.path.dirname(__file__))
from _explore import SIZE, npy, request, tiny_model  # noqa: E402

from segscope.explain import Concept, gradcam, lrp  # noqa: E402
from segscope.explore import Catalog, Explorer, running  # noqa: E402


def chrome(profile: str, width: int = 1280, height: int = 1000):
    """A headless Chromium driven by the system's chromedriver (no download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = BROWSER
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
                f"--window-size={width},{height}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)


@contextlib.contextmanager
def browsing(explorer: Explorer):
    """The explore page of ``explorer`` open in a headless Chromium: (driver, url); the
    browser, its profile and the catalog are gone afterwards."""
    profile = tempfile.mkdtemp(prefix="segscope-chromium-")
    driver = None
    try:
        with running(explorer) as url:
            driver = chrome(profile)
            driver.set_page_load_timeout(60)
            driver.get(url + "/")
            yield driver, url
    finally:
        if driver is not None:
            driver.quit()
        explorer.catalog.close()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page():
    model = tiny_model()
    explorer = Explorer(model, Catalog(["synthetic:2:narrow:1"], size=SIZE))
    with browsing(explorer) as (driver, url):
        yield driver, url, explorer, model


def _wait(driver, condition, what: str, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout).until(lambda d: condition(d))
    except Exception:  # noqa: BLE001 - say what did not happen, with the page's error
        error = driver.execute_script("return document.body.dataset.error || ''")
        pytest.fail(f"timed out waiting for {what}; page error: {error!r}")


def _new_result(driver, before: str | None) -> str:
    def done(d):
        rid = d.execute_script("return document.body.dataset.result || ''")
        busy = d.execute_script("return document.body.dataset.busy")
        loaded = d.execute_script("var i=document.getElementById('heatmap');"
                                  "return i.complete && i.naturalWidth")
        return rid if rid and rid != before and busy == "0" and loaded else False
    return _wait(driver, done, "a new heatmap")


def test_click_brush_and_gradcam_in_the_browser(page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver, url, explorer, model = page
    _wait(driver, lambda d: d.execute_script("return document.body.dataset.ready"), "the page")
    assert driver.execute_script("return document.body.dataset.image") == "d0-0"
    # every script and style came from this server
    sources = driver.execute_script(
        "return [...document.scripts].map(s=>s.src).concat("
        "[...document.querySelectorAll('link')].map(l=>l.href))")
    assert sources and all(s.startswith(url) for s in sources)
    image, _ = explorer.catalog.load("d0-0")

    # 1. click a pixel: the heatmap shown is LRP of that pixel's predicted class
    canvas = driver.find_element(By.ID, "draw")
    w, h = canvas.size["width"], canvas.size["height"]
    ActionChains(driver).move_to_element_with_offset(canvas, int(w * 0.25) - w // 2,
                                                     int(h * 0.6) - h // 2).click().perform()
    rid = _new_result(driver, None)
    status, numbers = request(f"{url}/api/results/{rid}/numbers.json")
    assert status == 200
    c = numbers["concept"]
    assert c["kind"] == "pixel" and c["assign"] == "one"
    assert abs(c["x"] - 0.25 * SIZE[1]) <= 2 and abs(c["y"] - 0.6 * SIZE[0]) <= 2
    ref = lrp(model, image, Concept.pixel(c["class_index"], c["y"], c["x"]))
    _, served = request(f"{url}/api/results/{rid}/pixels.npy")
    np.testing.assert_allclose(npy(served), ref.pixels.numpy(), rtol=1e-5, atol=1e-7)
    shown = driver.execute_script("return document.getElementById('heatmap').naturalWidth")
    assert shown == SIZE[1]
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#layer-grid img")) == 37,
          "the layer-by-layer grid")

    # 2. brush a mask: a drag across the image, explained on release
    Select(driver.find_element(By.ID, "concept-kind")).select_by_value("mask")
    Select(driver.find_element(By.ID, "concept-class")).select_by_value("road")
    ActionChains(driver).move_to_element_with_offset(canvas, -w // 4, 0).click_and_hold() \
        .move_by_offset(w // 8, 5).move_by_offset(w // 8, 5).release().perform()
    rid2 = _new_result(driver, rid)
    _, numbers = request(f"{url}/api/results/{rid2}/numbers.json")
    assert numbers["concept"]["kind"] == "mask" and numbers["concept"]["class"] == "road"
    _, sel = request(f"{url}/api/results/{rid2}/concept.npy")
    mask = npy(sel)
    assert mask.sum() == numbers["concept"]["selected"] > 20
    ref = lrp(model, image, Concept.mask("road", mask))
    _, served = request(f"{url}/api/results/{rid2}/pixels.npy")
    np.testing.assert_allclose(npy(served), ref.pixels.numpy(), rtol=1e-5, atol=1e-7)

    # 3. switch the method to Grad-CAM: the same mask, explained again
    Select(driver.find_element(By.ID, "method")).select_by_value("gradcam")
    rid3 = _new_result(driver, rid2)
    _, numbers = request(f"{url}/api/results/{rid3}/numbers.json")
    assert numbers["method"] == "gradcam" and numbers["layer"] == "conv5_1_D"
    want = gradcam(model, image, Concept.mask("road", mask), "conv5_1_D")
    _, served = request(f"{url}/api/results/{rid3}/pixels.npy")
    np.testing.assert_allclose(npy(served), want.numpy(), rtol=1e-5, atol=1e-7)
    assert not driver.find_element(By.ID, "cam-opts").get_attribute("hidden")

    # 4. a refused path: the server's one line shows in the page, and it keeps working
    box = driver.find_element(By.ID, "open-path")
    box.send_keys("../../etc/passwd")
    driver.find_element(By.CSS_SELECTOR, "#open-form button").click()
    text = _wait(driver, lambda d: d.find_element(By.ID, "error").is_displayed()
                 and d.find_element(By.ID, "error-text").text, "the error message")
    assert "refused" in text and "Traceback" not in text
    assert request(f"{url}/api/info")[0] == 200


def test_labels_without_markings_show_the_road_surface_iou(camvid_root):
    """CamVid's labels have no markings class: the image's table shows background and road
    surface IoU (the numbers the API gives), not a road row holding the road surface's."""
    from selenium.webdriver.common.by import By

    catalog = Catalog([str(camvid_root / "val.txt")], size=SIZE)
    explorer = Explorer(tiny_model(), catalog)
    view = explorer.view("d0-0")
    with browsing(explorer) as (driver, _):
        def table(d):
            rows = [[c.text for c in r.find_elements(By.CSS_SELECTOR, "th, td")]
                    for r in d.find_elements(By.CSS_SELECTOR, "#image-numbers tr")]
            return rows if len(rows) > 2 else False
        rows = _wait(driver, table, "the image's IoU table")
        # nothing the page asked for failed (a missing favicon.ico was a console error)
        severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
        assert not severe, severe
    assert [r[0] for r in rows[:3]] == ["class", "background", "road surface"]
    assert rows[2][1] == f"{100 * view['iou']['road surface']:.1f} %"
    assert rows[1][1] == f"{100 * view['iou']['background']:.1f} %"
    share = view["predicted_share"]
    assert rows[2][2] == f"{100 * (share['road'] + share['markings']):.1f} %"
