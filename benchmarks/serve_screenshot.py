"""The README's picture of ``covidct serve`` (images/serve.png): the page after one phantom COV slice is analysed.

Starts ``covidct serve --run RUN`` on a free loopback port, opens the page in Debian's chromium (headless, through
Playwright; no browser is downloaded), uploads a 128 px phantom COV slice, and saves a full-page screenshot as a
128-colour PNG.

Usage::

    python benchmarks/serve_screenshot.py --run runs/demo --out images/serve.png
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def main(argv=None) -> int:
    import cv2
    import httpx
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from covidct.data.phantom import make_dataset
    from covidct.data.windows import window_hu

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--out", default="images/serve.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args(argv)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "covidct", "serve", "--run", args.run, "--port", str(port)])
    try:
        for _ in range(1000):
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                return 1
            time.sleep(0.3)
        phantoms = make_dataset(n=6, size=128, seed=11, slices_per_patient=1)
        index = list(phantoms.labels).index("COV")
        with tempfile.TemporaryDirectory() as folder:
            image = Path(folder) / "cov_demo.png"
            cv2.imwrite(str(image), np.rint(window_hu(phantoms.images_hu[index]) * 255).astype(np.uint8))
            shot = Path(folder) / "page.png"
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=args.chromium, args=ARGS)
                page = browser.new_page(viewport={"width": 1000, "height": 900})
                page.goto(url)
                page.wait_for_function("document.querySelector('#scores').rows.length > 1")
                page.set_input_files("#file", str(image))
                page.wait_for_selector("#result:not([hidden])", timeout=120_000)
                page.screenshot(path=str(shot), full_page=True)
                browser.close()
            Image.open(shot).convert("P", palette=Image.ADAPTIVE, colors=128).save(args.out, optimize=True)
    finally:
        server.terminate()
        server.wait(30)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
