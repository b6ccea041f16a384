"""The review page in a real headless Chromium: a reviewer labels two items and the labels land in the lake.

Needs `chromium` and `chromedriver` on PATH (`scripts/ensure_chromium.sh` installs them); the system driver is
passed to Selenium explicitly so Selenium Manager never downloads anything.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from llm_assets.evaluation.review import CRITERIA, read_labels
from llm_assets_tests.test_evaluation import test_review as review_tests

VERSION = review_tests.VERSION
pilot = review_tests.pilot
server = review_tests.server


@contextmanager
def headless_chromium(profile: Path) -> Iterator[WebDriver]:
    """The system Chromium driven by the system chromedriver; fails (never skips) when either is missing."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.fail("chromium/chromedriver not on PATH; run scripts/ensure_chromium.sh", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def shows(driver: WebDriver, element_id: str, text: str) -> None:
    """Wait until element `element_id` contains `text`; a timeout names what the page showed instead."""
    try:
        WebDriverWait(driver, 5).until(ec.text_to_be_present_in_element((By.ID, element_id), text))
    except TimeoutException as exc:
        page = driver.find_element(By.ID, element_id).text
        message = driver.find_element(By.ID, "message").text
        raise AssertionError(f"#{element_id} shows {page!r}, not {text!r} (message: {message!r})") from exc


def answer(driver: WebDriver, ticks: set[str], comment: str) -> None:
    """Tick exactly `ticks` with the mouse, type the comment and click Submit."""
    for name in CRITERIA:
        box = driver.find_element(By.CSS_SELECTOR, f"#form input[name={name}]")
        assert not box.is_selected(), f"{name} starts unticked on a new item"
        if name in ticks:
            box.click()
    driver.find_element(By.CSS_SELECTOR, "#form textarea[name=comment]").send_keys(comment)
    driver.find_element(By.ID, "submit").click()


def test_reviewer_labels_two_items_in_the_browser(server, pilot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with headless_chromium(tmp_path / "chromium-profile") as browser:
        review_two_items(browser, server.url)

    labels = {label.item_id: label for label in read_labels(pilot, VERSION)}
    assert sorted(labels) == ["item-0", "item-1"]
    assert {label.reviewer for label in labels.values()} == {"ana"}
    got = {item: ({name for name in CRITERIA if getattr(label, name)}, label.comment) for item, label in labels.items()}
    assert got == {
        "item-0": ({"correct", "grounded", "safe"}, "could be worded more clearly"),
        "item-1": ({"clear"}, "wrong span"),
    }


def review_two_items(browser: WebDriver, url: str) -> None:
    """As reviewer ana, judge item-0 and item-1 with complementary ticks, so every criterion is seen both ways."""
    first, second = review_tests.pilot_item(0), review_tests.pilot_item(1)
    browser.get(url)
    browser.find_element(By.ID, "reviewer").send_keys("ana", Keys.ENTER)

    shows(browser, "question", first["question"])
    shows(browser, "source", first["source_id"])
    shows(browser, "progress", "0 / 3 labelled")
    assert browser.switch_to.active_element == browser.find_element(By.NAME, "correct"), "ready for the keyboard"

    answer(browser, {"correct", "grounded", "safe"}, "could be worded more clearly")
    shows(browser, "question", second["question"])
    shows(browser, "message", "Saved item-0 (correct, grounded, safe).")
    shows(browser, "progress", "1 / 3 labelled")
    assert [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#choices li")] == second["choices"]
    assert browser.find_element(By.CSS_SELECTOR, "#choices li.answer").text == second["answer"]
    assert browser.find_element(By.NAME, "comment").get_attribute("value") == "", "the comment box is cleared"

    answer(browser, {"clear"}, "wrong span")
    shows(browser, "question", review_tests.pilot_item(2)["question"])
    shows(browser, "message", "Saved item-1 (clear).")
    shows(browser, "progress", "2 / 3 labelled")
