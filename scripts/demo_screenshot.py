"""Retake docs/images/demo.png: the demo page in headless Chromium, all three tasks on a bundled sample.

    python scripts/demo_screenshot.py                       # the bundled default model, the first sample
    python scripts/demo_screenshot.py --sample receipt.jpg --out /tmp/demo.png

Starts `upocr serve`'s app on a free loopback port in this process, drives the page as a person would
(the sample menu, "Try it") with the browser of tests/browser.py, and saves the page as a 128-colour PNG.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser import headless_chromium, missing_browser  # noqa: E402

import upocr  # noqa: E402
from upocr.serve import start_server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", default=None, help="a bundled sample (default: the first)")
    parser.add_argument("--task", default="all", help="all (default), removal, segmentation or tampering")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "demo.png")
    parser.add_argument("--seconds", type=float, default=120, help="give up after this long (default 120)")
    args = parser.parse_args()
    problem = missing_browser()
    if problem:
        print(f"demo_screenshot: {problem}", file=sys.stderr)
        return 1
    server = start_server(upocr.Predictor(keep_output=False), model_label="bundled default upocr/weights")
    with tempfile.TemporaryDirectory() as folder:
        driver = headless_chromium(Path(folder) / "profile", Path(folder))
        try:
            sample = args.sample or server.state.sample_names()[0]
            driver.get(f"{server.url}?example={sample}&task={args.task}")
            deadline = time.monotonic() + args.seconds
            status = driver.find_element("id", "status")
            while not (" in " in status.text and status.text.endswith(" s")):
                if time.monotonic() > deadline or status.get_attribute("class") == "error":
                    print(f"demo_screenshot: the page says {status.text!r}", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            time.sleep(0.5)  # the pictures decode
            shot = Path(folder) / "page.png"
            driver.save_screenshot(str(shot))
        finally:
            driver.quit()
            server.stop()
        with Image.open(shot) as picture:
            picture.convert("RGB").quantize(128, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
