"""The demo page end to end in a real headless Chromium: strokes drawn with mouse and touch
events on the canvases, the bars read back from the page.

Needs Chromium and its driver (Debian: `apt-get install chromium chromium-driver`, which
.ci/run does) and selenium (the `dev` extra); skips with the reason otherwise.
BENCH_DEMO_SCREENSHOT=docs/demo.png also saves the README's screenshot of the page.
"""

import io
import math
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch

from bench.demo import build_entries, export_model, make_server, shipped_model

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Chromium and chromedriver on PATH "
                                "(Debian: apt-get install chromium chromium-driver)")


def circle(cx, cy, r, n=24, turns=1.0):
    return [(cx + r * math.cos(2 * math.pi * turns * i / n), cy + r * math.sin(2 * math.pi * turns * i / n))
            for i in range(n + 1)]


# Each symbol: strokes of points in 0..1 of the drawing box (inside the page's guide square).
SYMBOLS = [
    [circle(0.5, 0.5, 0.22)],                                                    # a ring
    [[(0.3, 0.3), (0.7, 0.3), (0.3, 0.7), (0.7, 0.7)]],                          # a Z
    [[(0.5, 0.25), (0.5, 0.75)], [(0.28, 0.5), (0.72, 0.5)]],                    # a cross
]
QUERY = [[(0.33, 0.32), (0.7, 0.34), (0.35, 0.68), (0.72, 0.7)]]                 # another Z


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results = tmp_path_factory.mktemp("results")
    export_model(shipped_model(), results / "omniglot-5w1s" / "copy" / "seed0")  # a second entry to select
    srv = make_server(build_entries(None, str(results)), port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1180,1000", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def page(server, browser):
    browser.get(server.url)
    WebDriverWait(browser, 20).until(lambda d: d.find_elements(By.ID, "class-2"))
    return browser


def mouse_draw(driver, canvas_id, strokes):
    canvas = driver.find_element(By.ID, canvas_id)
    size = canvas.size
    def at(x, y):  # offsets from the element's centre
        return round((x - 0.5) * size["width"]), round((y - 0.5) * size["height"])
    for stroke in strokes:
        actions = ActionChains(driver, duration=5)
        actions.move_to_element_with_offset(canvas, *at(*stroke[0])).click_and_hold()
        for x, y in stroke[1:]:
            actions.move_to_element_with_offset(canvas, *at(x, y))
        actions.release().perform()


def touch_draw(driver, canvas_id, strokes):
    rect = driver.execute_script(f"return document.getElementById('{canvas_id}').getBoundingClientRect().toJSON()")
    def at(x, y):
        return {"x": rect["left"] + x * rect["width"], "y": rect["top"] + y * rect["height"]}
    for stroke in strokes:
        driver.execute_cdp_cmd("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [at(*stroke[0])]})
        for x, y in stroke[1:]:
            driver.execute_cdp_cmd("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [at(x, y)]})
        driver.execute_cdp_cmd("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def wait_for(driver, state):
    WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == state)


def probabilities(driver):
    return [float(b.get_attribute("data-probability")) if b.get_attribute("data-probability") else None
            for b in driver.find_elements(By.CSS_SELECTOR, "#bars .bar")]


def draw_all(driver, draw=mouse_draw, query=QUERY):
    for i, symbol in enumerate(SYMBOLS):
        draw(driver, f"class-{i}", symbol)
    draw(driver, "query", query)


def test_mouse_strokes_give_class_probabilities(page):
    assert page.find_element(By.ID, "status").get_attribute("data-state") == "waiting"
    draw_all(page)
    wait_for(page, "done")
    p = probabilities(page)
    assert len(p) == 3 and abs(sum(p) - 1) < 1e-6 and all(0 <= v <= 1 for v in p)
    assert max(range(3), key=p.__getitem__) == 1, p  # the query is a Z, as class 2
    assert page.find_element(By.CSS_SELECTOR, ".bar.best").get_attribute("data-class") == "1"
    assert "Adam steps" in page.find_element(By.ID, "loss-text").text
    assert page.find_element(By.ID, "seen-query").get_attribute("src").startswith("data:image/png;base64,")
    if out := os.environ.get("BENCH_DEMO_SCREENSHOT"):
        from PIL import Image

        shot = Image.open(io.BytesIO(page.get_screenshot_as_png())).convert("RGB")
        height = page.execute_script("return document.querySelector('main').getBoundingClientRect().bottom")
        shot = shot.crop((0, 0, shot.width, min(shot.height, math.ceil(height) + 16)))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        shot.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)

    page.find_element(By.ID, "clear-query").click()
    wait_for(page, "waiting")
    assert probabilities(page) == [None, None, None]
    page.find_element(By.ID, "clear-all").click()
    assert "each class box" in page.find_element(By.ID, "status").text


def test_touch_strokes_and_the_checkpoint_selector(page):
    choice = Select(page.find_element(By.ID, "checkpoint"))
    assert [o.text.split(":")[0] for o in choice.options] == ["shipped", "omniglot-5w1s/copy/seed0"]
    choice.select_by_index(1)
    assert "reptile, preset omniglot-5w1s" in page.find_element(By.ID, "model-info").text
    assert [o.text for o in Select(page.find_element(By.ID, "classes")).options] == ["2", "3", "4", "5"]
    Select(page.find_element(By.ID, "classes")).select_by_visible_text("4")
    assert len(page.find_elements(By.CSS_SELECTOR, "canvas.draw")) == 5  # 4 classes and the query
    Select(page.find_element(By.ID, "classes")).select_by_visible_text("3")
    draw_all(page, touch_draw, query=SYMBOLS[0])
    wait_for(page, "done")
    p = probabilities(page)
    assert len(p) == 3 and max(range(3), key=p.__getitem__) == 0, p  # the query is class 1's ring
