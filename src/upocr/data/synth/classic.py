"""The v1 scene (`upocr synth --scenes v1`, the default) and its block recipe, which the v2 `classic`
kind draws too.

A v1 scene is a photo or texture (15 % of them mostly covered by paper: a "document"), one to five
randomly styled blocks (one or two on a document), and `camera.classic_camera`. A v1 block draws its
choices from the generator at the moment placement asks for them (`ClassicBlock`), in the order v1
always drew them, so the same seed gives the same bytes as before scene kinds existed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from upocr.data.synth import backgrounds, fonts, text
from upocr.data.synth.blocks import MIN_FONT_PX, BlockRecipe, BlockTooBig, SceneCanvas, place_block, random_curve
from upocr.data.synth.camera import classic_camera
from upocr.data.synth.render import Scene

DOCUMENT_PROBABILITY = 0.15  # v1 scenes covered by paper, with denser, smaller, upright text


@dataclass(frozen=True)
class ClassicBlock(BlockRecipe):
    """A v1 block: any font of the split, 3-17 % of the image's short side (2.5-5 % on a document),
    1-4 lines (3-8), any of the v1 scripts, 15 % curved, mostly level but up to +-90 degrees, 35 %
    skewed."""

    document: bool
    max_width: float  # pixels: 0.9 of the image's width

    def typeface(self, rng: np.random.Generator, split: str, min_side: int,
                 size_scale: float) -> tuple[fonts.FontSpec, str, int]:
        pool = fonts.fonts_for_split(split)
        font = pool[int(rng.integers(len(pool)))]
        if self.document:
            size = rng.uniform(0.025, 0.05) * min_side
        else:
            size = math.exp(rng.uniform(math.log(0.03), math.log(0.17))) * min_side
        size = max(MIN_FONT_PX, int(round(size * size_scale)))
        script = text.choose_script(rng)
        if not fonts.covers(font, text.random_word(rng, script)):
            script = "english"
        return font, script, size

    def line_counts(self, rng: np.random.Generator) -> tuple[int, int]:
        if self.document:
            return int(rng.integers(3, 9)), 7
        return int(rng.choice([1, 1, 1, 2, 2, 3, 4])), 4

    def alignment(self, rng: np.random.Generator) -> str:
        return "left" if self.document else rng.choice(["left", "center"])

    def curve_amplitude(self, rng: np.random.Generator, layer_width: int, line_count: int) -> float:
        if not self.document and rng.random() < 0.15 and line_count <= 2:
            return random_curve(rng, layer_width)
        return 0.0

    def rotation(self, rng: np.random.Generator, draw: float) -> float:
        if self.document:
            return rng.normal(0, 1.5)
        if draw < 0.55:
            return rng.normal(0, 3)
        if draw < 0.92:
            return rng.uniform(-30, 30)
        return rng.uniform(-90, 90)

    def skew(self, rng: np.random.Generator, corners: np.ndarray, layer_hw: tuple[int, int]) -> np.ndarray:
        if rng.random() >= 0.35:
            return corners
        jitter = rng.uniform(0.02, 0.12) * max(layer_hw)
        return corners + rng.uniform(-jitter, jitter, corners.shape).astype(np.float32)


def classic_plans(rng: np.random.Generator, split: str, hw: tuple[int, int]) -> list[BlockRecipe]:
    """The v2 `classic` kind's blocks: one to five v1 blocks."""
    return [ClassicBlock(document=False, max_width=hw[1] * 0.9)] * int(rng.integers(1, 6))


def render_classic_scene(rng: np.random.Generator, *, size: tuple[int, int], split: str = "train",
                         user_photos: tuple[str, ...] = (), user_mix: float = 0.0) -> Scene:
    """One v1 scene of `size` (height, width) drawn with the split's fonts and photos, and a `user_mix`
    share of backgrounds from `user_photos`."""
    h, w = size
    clean_bg = backgrounds.random_background(rng, split, h, w, user_photos=user_photos, user_mix=user_mix)
    degradation = classic_camera(rng, (h, w))
    document = rng.random() < DOCUMENT_PROBABILITY
    if document:
        paper = backgrounds.procedural_background(rng, h, w)
        clean_bg = np.clip(clean_bg * 0.15 + np.clip(paper + 120, 0, 255) * 0.85, 0, 255).astype(np.float32)
    canvas = SceneCanvas(clean_bg)
    wanted = int(rng.integers(1, 3)) if document else int(rng.integers(1, 6))
    recipe: BlockRecipe = ClassicBlock(document, max_width=w * 0.9)
    # Unlike v2's blocks, v1's share one budget of attempts, and a block that was too big keeps
    # the following ones smaller too.
    attempts, size_scale = 0, 1.0
    while len(canvas.blocks) < wanted and attempts < wanted * 4:
        attempts += 1
        try:
            placed = place_block(rng, recipe, canvas, split, degradation.reach, size_scale)
        except BlockTooBig:
            recipe, size_scale = recipe.smaller(size_scale)
            continue
        if placed is not None:
            canvas.draw(placed)
    return canvas.scene(degradation, split)
