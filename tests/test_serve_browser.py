"""The demo page in a real headless Chromium: pick an image, run each task, see the result, download it.

Needs Debian's chromium and chromium-driver (scripts/install_test_browser.sh) and selenium (the dev
extra); it fails, not skips, without them, so that CI cannot pass without running it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import headless_chromium, missing_browser
from upocr.predict import Predictor
from upocr.serve import start_server

SIZE = 64
TASKS = {"removal": ["result"], "segmentation": ["overlay", "mask"], "tampering": ["overlay", "classes"]}


@pytest.fixture(scope="module")
def page(tiny_weights, tmp_path_factory):
    problem = missing_browser()
    assert problem is None, problem
    server = start_server(Predictor(weights=tiny_weights, size=SIZE, tile=None, keep_output=False),
                          model_label="tiny test model")
    folder = tmp_path_factory.mktemp("browser")
    downloads = folder / "downloads"
    downloads.mkdir()
    driver = headless_chromium(folder / "profile", downloads)
    try:
        driver.get(server.url)
        yield driver, server, downloads
    finally:
        driver.quit()
        server.stop()


def _wait(condition, seconds: float = 30, what: str = "") -> object:
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _photo(tmp_path: Path) -> Path:
    """A light page with dark bars (text-like), 70 x 45: not square, not a multiple of 32."""
    pixels = np.full((45, 70, 3), 230, np.uint8)
    pixels[10:16, 8:50] = 20
    pixels[26:32, 12:60] = 30
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("task", list(TASKS))
def test_pick_an_image_run_a_task_see_and_download_the_result(page, task, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver, server, downloads = page
    _wait(lambda: driver.find_element(By.ID, "model").text.startswith("model: tiny test model"), what="health")
    Select(driver.find_element(By.ID, "task")).select_by_value(task)
    driver.find_element(By.ID, "file").send_keys(str(_photo(tmp_path)))  # choosing a file runs the task
    status = driver.find_element(By.ID, "status")
    _wait(lambda: status.text.startswith(f"{task} on photo.png (70 × 45) in "), what=f"{task} result: {status.text}")
    cards = driver.find_elements(By.CSS_SELECTOR, "#results figure")
    assert [card.find_element(By.TAG_NAME, "h2").text for card in cards] == ["input", task.replace("removal", "text removal")
                                                                              .replace("segmentation", "text segmentation")
                                                                              .replace("tampering", "tampered text detection")]
    for card in cards:  # every picture really decoded and shown
        image = card.find_element(By.TAG_NAME, "img")
        _wait(lambda: driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) == 70,
              what="the picture")
    if task != "removal":
        assert "word" in cards[1].find_element(By.CLASS_NAME, "sub").text  # regions from the API answer
    links = cards[1].find_elements(By.CSS_SELECTOR, "a.download")
    assert [link.get_attribute("download") for link in links] == [f"photo_{task}_{kind}.png" for kind in TASKS[task]]
    links[-1].click()
    saved = downloads / f"photo_{task}_{TASKS[task][-1]}.png"
    _wait(saved.exists, what=f"the download {saved.name}")
    _wait(lambda: not list(downloads.glob("*.crdownload")), what="the download to finish")
    with Image.open(saved) as picture:
        assert picture.size == (70, 45)
        if task == "segmentation":
            assert set(np.unique(np.asarray(picture))) <= {0, 255}


def test_all_three_on_a_bundled_sample_and_a_screenshot(page, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver, server, _ = page
    _wait(lambda: driver.find_element(By.ID, "model").text.startswith("model:"), what="health")
    Select(driver.find_element(By.ID, "task")).select_by_value("all")
    Select(driver.find_element(By.ID, "sample")).select_by_value("cafe_sign.jpg")
    driver.find_element(By.ID, "run-sample").click()
    status = driver.find_element(By.ID, "status")
    _wait(lambda: status.text.startswith("removal, segmentation, tampering on cafe_sign.jpg"), 60, what=status.text)
    assert len(driver.find_elements(By.CSS_SELECTOR, "#results figure")) == 4
    assert driver.find_element(By.ID, "status").get_attribute("class") != "error"
    shot = tmp_path / "page.png"
    assert driver.save_screenshot(str(shot))
    with Image.open(shot) as picture:
        assert picture.size[0] > 600 and np.asarray(picture.convert("L")).std() > 10  # not a blank page


def test_an_error_is_shown_on_the_page(page, tmp_path):
    from selenium.webdriver.common.by import By

    driver, _, _ = page
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    driver.find_element(By.ID, "file").send_keys(str(notes))
    status = driver.find_element(By.ID, "status")
    _wait(lambda: "notes.txt: not an image file" in status.text, what=status.text)
    assert status.get_attribute("class") == "error"
