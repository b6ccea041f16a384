"""The Dagster UI in a real headless Chromium, against an instance the demo filled: the asset graph, an asset's
checks tab and a metadata plot must render (no error boundary), with screenshots kept as test artifacts."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from llm_assets_tests.test_evaluation.test_review_browser import headless_chromium

ARTIFACTS = Path(os.environ.get("LLM_ASSETS_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
ERROR_TEXTS = ("Something went wrong", "An error occurred", "Unexpected error")  # Dagster's error boundaries
PLOT_LOADED = "return Array.from(document.images).some(i => i.src.startsWith('data:image/png') && i.naturalWidth > 100)"


def _page_shows(driver: WebDriver, texts: tuple[str, ...], what: str, shot: Path) -> str:
    def ready(d: WebDriver) -> bool:
        body = d.find_element(By.TAG_NAME, "body").text
        return all(text in body for text in texts)

    try:
        WebDriverWait(driver, 60, poll_frequency=1).until(ready)
    except TimeoutException as exc:
        driver.save_screenshot(str(shot))
        body = driver.find_element(By.TAG_NAME, "body").text[:500]
        raise AssertionError(f"{what}: {texts} not shown within 60 s (screenshot {shot}); page: {body!r}") from exc
    driver.save_screenshot(str(shot))
    body = driver.find_element(By.TAG_NAME, "body").text
    errors = [text for text in ERROR_TEXTS if text in body]
    assert not errors, f"{what}: the page shows an error ({errors}); screenshot {shot}"
    return body


def check_dagster_ui(env: dict[str, str], cli: Path, port: int, profile: Path) -> list[Path]:
    """Start `llm-assets ui` (dagster dev on 127.0.0.1) on the instance of `env` and look at it."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base = f"http://127.0.0.1:{port}"
    log = ARTIFACTS / "dagster-ui.log"
    with log.open("wb") as handle:
        ui = subprocess.Popen(
            [str(cli), "ui", "--port", str(port)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    shots: list[Path] = []
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/server_info", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert ui.poll() is None, f"llm-assets ui exited with {ui.returncode}: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"the UI did not answer within 180 s: {log.read_text()[-2000:]}"
            time.sleep(1)
        # On 127.0.0.1 Dagster shows a "Join the community" modal once; this is what its button does.
        seen = httpx.post(f"{base}/graphql", json={"query": "mutation { setNuxSeen }"}, timeout=30).json()
        assert seen == {"data": {"setNuxSeen": True}}, seen
        query = "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }"
        entries = httpx.post(f"{base}/graphql", json={"query": query}, timeout=30).json()
        location = entries["data"]["workspaceOrError"]["locationEntries"][0]["name"]
        with headless_chromium(profile) as driver:
            driver.set_window_size(1400, 1000)
            driver.get(f"{base}/asset-groups")
            shots.append(ARTIFACTS / "ui-global-lineage.png")
            _page_shows(driver, ("Global asset lineage", "curation", "monitoring"), "global lineage", shots[-1])
            driver.get(f"{base}/locations/{location}/asset-groups/curation/lineage")
            shots.append(ARTIFACTS / "ui-curation-graph.png")
            _page_shows(driver, ("curated_corpus", "raw_corpus", "tokenizer"), "curation asset graph", shots[-1])
            driver.get(f"{base}/assets/eval_report?view=checks")
            shots.append(ARTIFACTS / "ui-eval-report-checks.png")
            body = _page_shows(driver, ("business_score", "pii_leak", "adapter_applied"), "checks tab", shots[-1])
            assert "This is a blocking asset check." in body or "Succeeded" in body, body[:500]
            driver.get(f"{base}/assets/curated_corpus?view=events")
            _page_shows(driver, ("retention_plot", "[Show Markdown]"), "curated_corpus events", ARTIFACTS / "x.png")
            driver.find_element(By.XPATH, "//tr[.//*[text()='retention_plot']]//a[text()='[Show Markdown]']").click()
            WebDriverWait(driver, 20).until(lambda d: d.execute_script(PLOT_LOADED))
            shots.append(ARTIFACTS / "ui-retention-plot.png")
            _page_shows(driver, ("retention_plot", "Close"), "metadata plot", shots[-1])
            (ARTIFACTS / "x.png").unlink(missing_ok=True)
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        try:
            ui.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
    return shots
