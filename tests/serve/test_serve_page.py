"""The page in a real browser: Debian's chromium, headless, driven by Playwright, against `covidct serve`.

Skips when /usr/bin/chromium is missing (``.ci/run`` installs it, so CI runs this test). Never downloads a browser.
"""

from __future__ import annotations

import os
import time

import pytest
from serve_helpers import CHROMIUM

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing (apt-get install chromium)"),
    pytest.mark.filterwarnings("ignore::covidct.explain.focus.LungFocusWarning"),
]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


DROP = """(bytes) => {
  const transfer = new DataTransfer();
  transfer.items.add(new File([new Uint8Array(bytes)], "notes.png", {type: "image/png"}));
  document.querySelector("#drop").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
}"""


def _wait_healthy(server, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server["process"].poll() is not None:
            pytest.fail(f"covidct serve exited with {server['process'].returncode}:\n{server['log'].read_text()[-3000:]}")
        try:
            if httpx.get(server["url"] + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"covidct serve did not answer within {timeout} s:\n{server['log'].read_text()[-3000:]}")


def test_upload_in_the_browser_shows_the_prediction(server_process, serve_run, cov_png, tmp_path):
    import httpx
    from playwright.sync_api import sync_playwright

    _wait_healthy(server_process)
    url = server_process["url"]
    good, bad = tmp_path / "cov slice.png", tmp_path / "notes.png"
    good.write_bytes(cov_png)
    bad.write_bytes(b"this is a text file, renamed\n" * 20)
    expected = httpx.post(url + "/api/predict", files={"file": ("cov.png", cov_png)}, timeout=60).json()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 1400})
            problems, remote = [], []
            page.on("console", lambda message: problems.append(message.text)
                    if message.type == "error" and "status of 415" not in message.text else None)
            page.on("request", lambda request: None if request.url.startswith(url) or request.url.startswith("data:")
                    else remote.append(request.url))
            page.goto(url)
            page.wait_for_function("document.querySelector('#scores').rows.length > 1")
            assert serve_run.name in page.inner_text("#run-info")
            scores = page.inner_text("#scores")
            assert "internal test" in scores and "external test" in scores and "validation" in scores
            assert "not a diagnostic device" in page.inner_text("#disclaimer")

            page.set_input_files("#file", str(good))
            page.wait_for_selector("#result:not([hidden])", timeout=30_000)
            assert page.inner_text("#predicted") == expected["predicted_class"]
            table = page.inner_text("#probabilities")
            for name, value in expected["probabilities"].items():
                assert name in table and f"{value:.3f}" in table
            width = page.eval_on_selector("#gradcam", "img => img.complete ? img.naturalWidth : 0")
            assert width == 48
            assert page.get_attribute("#gradcam", "src") == expected["images"]["gradcam"]
            assert "Lung focus" in page.inner_text("#focus")
            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("COVIDCT_SERVE_SCREENSHOT"):  # the README's picture: images/serve.png
                page.screenshot(path=os.environ["COVIDCT_SERVE_SCREENSHOT"], full_page=True)

            # The bad file is dropped on the drop zone (the drag-and-drop path), not picked.
            page.evaluate(DROP, list(bad.read_bytes()))
            page.wait_for_selector("#error:not([hidden])", timeout=30_000)
            message = page.inner_text("#error")
            assert "Could not analyse notes.png" in message and "is a text file, not a supported image" in message
            assert page.is_hidden("#result")
            assert not problems, problems  # no script error, no CSP violation, no missing file (the 415 is expected)
            assert not remote, remote  # nothing fetched from outside the server
        finally:
            browser.close()
