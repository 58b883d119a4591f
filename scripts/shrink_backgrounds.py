"""Copy photographs into a folder for `upocr synth --backgrounds`, shrunk so the folder travels light.

    python scripts/shrink_backgrounds.py OUT IMAGE [IMAGE ...] [--max-side 1024]

Each image becomes OUT/<name>.jpg (quality 92) with its longer side at most --max-side (synth crops
256-1024 px scenes from it). Wallpapers that show a desktop's logo or name are skipped: a background must
not contain text (the label would call it background). `scripts/gpu_session.sh --fetch-wheels` uses this
on Debian's wallpaper packages.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

# Wallpapers of those packages that carry a logo or a product name (checked on a contact sheet of all of them).
WITH_TEXT = re.compile(r"ubuntukylin|2004default|Float-into-MATE|GreenTraditional|Arc-Colors|Stripes|no-logo", re.IGNORECASE)
# Transparent PNGs that come out plain white (nothing to learn from), and the same picture in larger sizes.
SKIPPED = re.compile(r"^(Silk|Spring|Waves|Elephants_\d+x\d+)\.", re.IGNORECASE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--max-side", type=int, default=1024)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    written = 0
    for path in tqdm(args.images, desc="backgrounds", unit="image", file=sys.stderr):
        if WITH_TEXT.search(path.name) or SKIPPED.search(path.name):
            continue
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                image.thumbnail((args.max_side, args.max_side), Image.Resampling.LANCZOS)
                target = args.out / f"{path.stem}.jpg"
                if target.exists():
                    target = args.out / f"{path.parent.name}-{path.stem}.jpg"
                image.save(target, quality=92)
                written += 1
        except OSError as error:
            print(f"{path}: skipped ({error})", file=sys.stderr)
    print(f"{written} backgrounds in {args.out}")
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
