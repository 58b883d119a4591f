"""Contact sheets of synthetic samples (16 per task), read back through the layout readers.

    python -m upocr.data.synth.contact_sheet --out docs/images [--split train] [--seed 0] [--scenes v2]
                                             [--backgrounds DIR]
    upocr synth --out unused --count 1 --contact-sheet DIR [--scenes v2] [--backgrounds DIR]

writes synth-removal.jpg (input | text-free label | mask), synth-segmentation.jpg (input | label:
white text, orange word effect, grey ignore) and synth-tampering.jpg (input | boxes: green real,
red tampered), each a 4 x 4 grid.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from upocr.data import layouts
from upocr.data.synth.generate import generate_dataset
from upocr.tasks import Task
from upocr.utils import atomic_output

SHEET_SAMPLES = 16
MAX_BYTES = 400_000


def _fit(image: np.ndarray, tile: int) -> np.ndarray:
    return cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA)


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(layouts.read_rgb(path))


def removal_tiles(root: Path, split: str, tile: int) -> list[np.ndarray]:
    tiles = []
    for sample in layouts.removal_samples(root, split)[:SHEET_SAMPLES]:
        mask = layouts.read_removal_mask(sample.mask) * 255
        parts = [_rgb(sample.image), _rgb(sample.label), np.repeat(mask[..., None], 3, 2)]
        tiles.append(np.concatenate([_fit(p, tile) for p in parts], 1))
    return tiles


def segmentation_tiles(root: Path, split: str, tile: int) -> list[np.ndarray]:
    tiles = []
    samples = layouts.segmentation_samples(root, split)
    if split == "train":  # a train run also fills TextSeg's "val" list
        samples = sorted(samples + layouts.segmentation_samples(root, "val"), key=lambda s: s.name)
    for sample in samples[:SHEET_SAMPLES]:
        raw = np.asarray(Image.open(sample.label).convert("L"))
        vis = np.zeros(raw.shape + (3,), np.uint8)
        vis[raw == layouts.TEXTSEG_TEXT] = 255
        vis[raw == layouts.TEXTSEG_EFFECT] = (255, 140, 0)
        vis[raw == layouts.TEXTSEG_IGNORE] = (110, 110, 110)
        tiles.append(np.concatenate([_fit(_rgb(sample.image), tile), _fit(vis, tile)], 1))
    return tiles


def tampering_tiles(root: Path, split: str, tile: int) -> list[np.ndarray]:
    tiles = []
    for sample in layouts.tampering_samples(root, split)[:SHEET_SAMPLES]:
        image = _rgb(sample.image)
        boxed = image.copy()
        for x1, y1, x2, y2, label in layouts.read_tampering_boxes(sample.gt):
            colour = (0, 220, 0) if label == layouts.REAL_TEXT else (255, 0, 0)
            cv2.rectangle(boxed, (x1, y1), (x2, y2), colour, thickness=max(1, image.shape[0] // 200))
        tiles.append(np.concatenate([_fit(image, tile), _fit(boxed, tile)], 1))
    return tiles


def grid(tiles: list[np.ndarray], columns: int = 4, gap: int = 6) -> np.ndarray:
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + columns - 1) // columns
    sheet = np.full((rows * h + (rows + 1) * gap, columns * w + (columns + 1) * gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[gap + r * (h + gap):gap + r * (h + gap) + h, gap + c * (w + gap):gap + c * (w + gap) + w] = tile
    return sheet


def save_under(path: Path, image: np.ndarray, max_bytes: int = MAX_BYTES) -> int:
    """Save as JPEG at the highest quality that fits `max_bytes`; returns the byte count."""
    for quality in range(90, 30, -5):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        if buffer.tell() <= max_bytes:
            break
    with atomic_output(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return buffer.tell()


def make_contact_sheets(out_dir: str | Path, *, split: str = "train", seed: int = 0, size: int = 512,
                        tile: int = 160, workers: int | None = None, **generate_options) -> dict[str, Path]:
    """Sheets of 16 samples per task; `generate_options` go to `generate_dataset` (scenes, backgrounds)."""
    out_dir = Path(out_dir)
    written = {}
    with tempfile.TemporaryDirectory(prefix="upocr-sheet-") as tmp:
        root = Path(tmp)
        generate_dataset(root, count=SHEET_SAMPLES, seed=seed, split=split, size=size, workers=workers,
                         **generate_options)
        makers = {Task.TEXT_REMOVAL: removal_tiles, Task.TEXT_SEGMENTATION: segmentation_tiles,
                  Task.TAMPERED_TEXT_DETECTION: tampering_tiles}
        for task, maker in makers.items():
            path = out_dir / f"synth-{task.short}.jpg"
            save_under(path, grid(maker(root, split, tile)))
            written[task.short] = path
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the three JPEG sheets")
    parser.add_argument("--split", default="train", choices=["train", "test"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--tile", type=int, default=160, help="pixels per panel in the sheet")
    parser.add_argument("--scenes", choices=["v1", "v2"], default="v1")
    parser.add_argument("--backgrounds", default=None, help="folder of text-free photos (see upocr synth)")
    args = parser.parse_args(argv)
    for task, path in make_contact_sheets(args.out, split=args.split, seed=args.seed, size=args.size,
                                          tile=args.tile, scenes=args.scenes,
                                          background_dir=args.backgrounds).items():
        print(f"{task}: {path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
