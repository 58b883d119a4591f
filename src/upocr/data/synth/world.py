"""v2 scenes (`upocr synth --scenes v2`): text placed as in the world, with exact ground truth.

Each scene is one of these kinds (weights in KIND_WEIGHTS):

  classic   the v1 scene (random blocks on a photo or texture);
  sign      plates/signs on a surface (the plate belongs to the background), perspective, light;
  poster    a headline with large glyphs (0.12-0.4 of the short side: at --size 1024 and more, glyphs
            bigger than a 256-px tile) and a few small lines;
  ui        a screenshot: flat theme, bars and buttons, crisp 10-18 px text, upright, no camera effects;
  document  a book page (whole image paper, 1-2 columns) or a receipt (paper strip on a surface), both
            at real print sizes: x-height 8-14 px on a 1000 px page (scaled down on smaller images).

Camera effects (`world_degradation`) are applied identically to the composite and to its text-free
twin, so outside the word polygons both stay equal: lighting (gradient, cast shadow, vignette,
fractal), blur (Gaussian, defocus disk, motion), additive and signal-dependent (shot) noise driven
by ONE random field (so the noise differs only where the text changed the signal), JPEG at write time.

Most backgrounds also get non-text marks (barcodes, rules, icons, railings, pen loops: `clutter.py`),
drawn into the text-free background, so the model learns to leave them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from upocr.data.synth import backgrounds, fonts, text
from upocr.data.synth.clutter import add_clutter
from upocr.data.synth.render import (MIN_FONT_PX, BlockPlan, Degradation, PageCurl, Plate, Scene, SceneCanvas,
                                     _random_degradation, _try_block, composite_plate, contrasting_colour,
                                     render_classic_scene)

KINDS = ("classic", "sign", "poster", "ui", "document")
# Share of sign and poster headlines set on a circular arc (badges, seals, round signs, logos), and the
# arc's span in degrees: real signs curve text up to half a circle and more, the sine "curve" barely.
ARC_PROBABILITY = 0.2
ARC_DEGREES = (50.0, 220.0)
KIND_WEIGHTS = (0.2, 0.22, 0.16, 0.12, 0.3)
# x-height / font size of common fonts (about 0.45-0.55): font px = x-height / this.
X_HEIGHT_RATIO = 0.5


@dataclass(frozen=True)
class SceneOptions:
    """What `render_scene` draws: `scenes` v1 (the original generator) or v2 (this module), and an
    optional folder's photos (`user_photos`) used for a `background_mix` share of backgrounds."""

    scenes: str = "v1"
    user_photos: tuple[str, ...] = ()
    background_mix: float = 0.5
    kinds: tuple[str, ...] = KINDS  # v2 kinds to draw from (their KIND_WEIGHTS renormalised)


# --------------------------------------------------------------------------------------------
# Fonts, scripts, colours
# --------------------------------------------------------------------------------------------


def _script(rng: np.random.Generator, split: str) -> str:
    return text.choose_script_v2(rng, lambda name: bool(fonts.fonts_for_script(split, name)))


def _font(rng: np.random.Generator, split: str, script: str, prefer: tuple[str, ...]) -> fonts.FontSpec:
    """A font of `split` covering `script`, of a `prefer`red style 70 % of the time when one exists."""
    pool = fonts.fonts_for_script(split, script) or fonts.fonts_for_split(split)
    preferred = [f for f in pool if f.style in prefer]
    choice = preferred if preferred and rng.random() < 0.7 else pool
    return choice[int(rng.integers(len(choice)))]


def _vivid_colour(rng: np.random.Generator) -> np.ndarray:
    """Sign colours: saturated hues, white, or dark."""
    r = rng.random()
    if r < 0.25:
        return np.full(3, rng.uniform(225, 252), np.float32)
    if r < 0.4:
        return np.full(3, rng.uniform(15, 60), np.float32)
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(120, 256), rng.integers(90, 240)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def ink_colour(rng: np.random.Generator) -> np.ndarray:
    """Printed text: mostly near-black, sometimes blue, red or faded (thermal receipts)."""
    r = rng.random()
    if r < 0.72:
        colour = np.full(3, rng.uniform(10, 60))
    elif r < 0.84:
        colour = np.array([rng.uniform(10, 50), rng.uniform(20, 60), rng.uniform(90, 150)])
    elif r < 0.9:
        colour = np.array([rng.uniform(140, 190), rng.uniform(10, 40), rng.uniform(10, 40)])
    else:
        colour = np.full(3, rng.uniform(80, 120))
    return np.clip(colour + rng.normal(0, 4, 3), 0, 255).astype(np.float32)


def print_size(rng: np.random.Generator, hw: tuple[int, int]) -> int:
    """Font px for body print: x-height 8-14 px on a 1000 px page, proportionally less below."""
    x_height = rng.uniform(8, 14) * min(1.0, max(hw) / 1000)
    return max(MIN_FONT_PX, int(round(x_height / X_HEIGHT_RATIO)))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


# --------------------------------------------------------------------------------------------
# Block plans per kind
# --------------------------------------------------------------------------------------------


def _sign_plan(rng: np.random.Generator, split: str, hw: tuple[int, int]) -> BlockPlan:
    script = _script(rng, split)
    size = max(MIN_FONT_PX, int(_log_uniform(rng, 0.035, 0.14) * min(hw)))
    colour = _vivid_colour(rng)
    border = int(rng.random() < 0.3) * max(1, int(size * rng.uniform(0.04, 0.1)))
    plate = Plate(colour=colour, padding=int(size * rng.uniform(0.25, 0.9)), corner=int(size * rng.uniform(0, 0.5)),
                  border=border, border_colour=contrasting_colour(rng, colour, 80) if border else None)
    plan = BlockPlan(font=_font(rng, split, script, ("sans", "display")), script=script, size=size,
                     lines=int(rng.choice([1, 1, 2, 3])), words_per_line=int(rng.integers(1, 4)),
                     max_width=hw[1] * 0.8, angle=float(rng.normal(0, 6)), perspective=float(rng.uniform(0.03, 0.18)),
                     align=str(rng.choice(["left", "center"])), plate=plate, min_contrast=90.0)
    return _maybe_arc(rng, plan)


def _maybe_arc(rng: np.random.Generator, plan: BlockPlan) -> BlockPlan:
    """With ARC_PROBABILITY, one line of the plan bent around a circle (an arch or a smile)."""
    if rng.random() >= ARC_PROBABILITY:
        return plan
    degrees = float(rng.uniform(*ARC_DEGREES)) * float(rng.choice([1, -1]))
    return replace(plan, lines=1, arc=degrees, curve=False, angle=plan.angle / 3, perspective=plan.perspective / 2)


def _poster_plans(rng: np.random.Generator, split: str, hw: tuple[int, int]) -> list[BlockPlan]:
    script = _script(rng, split)
    tilt = float(rng.normal(0, 2))
    perspective = float(rng.uniform(0, 0.06))
    headline = BlockPlan(font=_font(rng, split, script, ("display", "sans", "hand")), script=script,
                         size=int(rng.uniform(0.12, 0.4) * min(hw)), lines=int(rng.choice([1, 1, 2])),
                         words_per_line=int(rng.integers(1, 3)), max_width=hw[1] * 0.95, angle=tilt,
                         perspective=perspective, curve=bool(rng.random() < 0.1), align="center", min_contrast=80.0)
    headline = _maybe_arc(rng, headline)
    small = [BlockPlan(font=_font(rng, split, script, ("sans", "serif")), script=script,
                       size=max(MIN_FONT_PX, int(rng.uniform(0.025, 0.06) * min(hw))), lines=int(rng.integers(1, 4)),
                       words_per_line=int(rng.integers(2, 6)), max_width=hw[1] * 0.8, angle=tilt,
                       perspective=perspective, align=str(rng.choice(["left", "center"])))
             for _ in range(int(rng.integers(1, 4)))]
    return [headline] + small


def _ui_plan(rng: np.random.Generator, split: str, hw: tuple[int, int]) -> BlockPlan:
    script = _script(rng, split)
    size = int(rng.uniform(20, 32)) if rng.random() < 0.15 else int(rng.uniform(10, 18))
    plate = None
    if rng.random() < 0.3:  # a button
        colour = _vivid_colour(rng)
        plate = Plate(colour=colour, padding=int(rng.integers(4, 11)), corner=int(rng.integers(0, 11)))
    return BlockPlan(font=_font(rng, split, script, ("sans",)), script=script, size=size,
                     lines=int(rng.choice([1, 1, 1, 2, 3])), words_per_line=int(rng.integers(1, 6)),
                     max_width=hw[1] * 0.6, angle=0.0, perspective=0.0, plate=plate, min_contrast=100.0)


def _page_plans(rng: np.random.Generator, split: str, hw: tuple[int, int]) -> list[BlockPlan]:
    """A book page: one or two columns of body text at print size, sometimes a heading."""
    h, w = hw
    script = _script(rng, split)
    font = _font(rng, split, script, ("serif",))
    size = print_size(rng, hw)
    columns = 2 if w > 600 and rng.random() < 0.4 else 1
    angle, perspective = float(rng.normal(0, 0.8)), float(rng.uniform(0, 0.02))
    ink = ink_colour(rng)
    lines = max(3, int(0.75 * h / (size * 1.2 * 1.4)))  # line height <= 1.2 em x 1.35 spacing
    body = [BlockPlan(font=font, script=script, size=size, lines=lines // (2 if rng.random() < 0.3 else 1),
                      words_per_line=16, max_width=w * (0.8 if columns == 1 else 0.4), angle=angle,
                      perspective=perspective, min_contrast=100.0, ink=ink) for _ in range(columns)]
    if rng.random() < 0.4:  # after the body: placed where the body left room
        body.append(BlockPlan(font=font, script=script, size=int(size * rng.uniform(1.4, 2.5)), lines=1,
                              words_per_line=4, max_width=w * 0.8, angle=angle, perspective=perspective,
                              min_contrast=100.0, ink=ink))
    return body


def _receipt_plan(rng: np.random.Generator, split: str, hw: tuple[int, int]) -> BlockPlan:
    script = "english" if rng.random() < 0.7 else _script(rng, split)
    size = print_size(rng, hw)
    paper = np.clip(rng.uniform(225, 250) + rng.normal(0, 4, 3), 0, 255).astype(np.float32)
    plate = Plate(colour=paper, padding=int(size * rng.uniform(0.8, 2.0)), corner=0, texture_kind=5)
    return BlockPlan(font=_font(rng, split, script, ("mono",)), script=script, size=size,
                     lines=max(4, min(40, int(0.7 * hw[0] / (size * 1.3)))), words_per_line=int(rng.integers(2, 6)),
                     max_width=hw[1] * rng.uniform(0.3, 0.6), angle=float(rng.normal(0, 4)),
                     perspective=float(rng.uniform(0, 0.06)), align=str(rng.choice(["left", "center"])), plate=plate,
                     min_contrast=100.0, ink=ink_colour(rng))


# --------------------------------------------------------------------------------------------
# Backgrounds and camera
# --------------------------------------------------------------------------------------------


def ui_background(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """A flat light or dark theme with a header bar and a few panels (no texture, no grain)."""
    h, w = hw
    dark = rng.random() < 0.3
    base = rng.uniform(20, 50) if dark else rng.uniform(235, 255)
    image = np.empty((h, w, 3), np.float32)
    image[:] = np.clip(base + rng.normal(0, 4, 3), 0, 255)
    bar = int(h * rng.uniform(0.05, 0.12))
    image[:bar] = _vivid_colour(rng)
    for _ in range(int(rng.integers(1, 5))):
        y0, x0 = int(rng.integers(bar, max(bar + 1, h - 20))), int(rng.integers(0, max(1, w - 20)))
        y1, x1 = min(h, y0 + int(rng.integers(20, max(21, h // 2)))), min(w, x0 + int(rng.integers(20, max(21, w // 2))))
        image[y0:y1, x0:x1] = np.clip(image[y0, x0] + rng.normal(0, 1, 3) * 12 + (10 if dark else -10), 0, 255)
    return image


def _cast_shadow(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """(H, W) multiplicative field: a soft-edged polygon (a hand, a pole, a roof edge) darker."""
    h, w = hw
    points = np.stack([rng.uniform(-0.2, 1.2, 5) * w, rng.uniform(-0.2, 1.2, 5) * h], 1)
    hull = cv2.convexHull(points.astype(np.float32)).astype(np.int32)
    mask = np.zeros((h, w), np.float32)
    cv2.fillPoly(mask, [hull], 1.0)
    mask = cv2.GaussianBlur(mask, (0, 0), rng.uniform(0.01, 0.06) * max(h, w) + 1)
    return 1 - rng.uniform(0.25, 0.6) * mask


def _lighting(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray | None:
    h, w = hw
    field = np.ones((h, w), np.float32)
    used = False
    if rng.random() < 0.4:  # directional light: a linear gradient
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = (xx * np.cos(angle) + yy * np.sin(angle)) / max(h, w)
        field *= 1 + rng.uniform(0.1, 0.5) * (t - t.mean())
        used = True
    if rng.random() < 0.3:
        field *= _cast_shadow(rng, hw)
        used = True
    if rng.random() < 0.25:  # vignette
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
        field *= 1 - rng.uniform(0.1, 0.35) * r2 / 2
        used = True
    if rng.random() < 0.3:
        noise = backgrounds._fractal_noise(rng, h, w, octaves=2)
        field *= 1 + rng.uniform(0.1, 0.4) * (noise - 0.5)
        used = True
    return field[..., None].astype(np.float32) if used else None


def _defocus_kernel(radius: float) -> np.ndarray:
    size = 2 * int(math.ceil(radius)) + 1
    kernel = np.zeros((size, size), np.float32)
    cv2.circle(kernel, (size // 2, size // 2), int(round(radius)), 1.0, -1, lineType=cv2.LINE_AA)
    return kernel / kernel.sum()


def world_degradation(rng: np.random.Generator, hw: tuple[int, int], kind: str) -> Degradation:
    """Camera effects for a v2 scene (screenshots: none, only JPEG)."""
    h, w = hw
    if kind == "ui":
        return Degradation(None, 0.0, None, None, int(rng.integers(75, 99)))
    if kind == "classic":
        return _random_degradation(rng, hw)
    illumination = _lighting(rng, hw)
    r = rng.random()
    blur, kernel = 0.0, None
    if r < 0.45:
        blur = float(rng.uniform(0.3, 1.4))
    elif r < 0.55:
        kernel = _defocus_kernel(float(rng.uniform(1.2, 3.0)))
    elif r < 0.63:
        length = int(rng.integers(3, 9))
        kernel = np.zeros((length, length), np.float32)
        kernel[length // 2, :] = 1
        rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), float(rng.uniform(0, 180)), 1.0)
        kernel = cv2.warpAffine(kernel, rot, (length, length))
        kernel /= max(float(kernel.sum()), 1e-6)
    noise, shot = None, None
    if rng.random() < 0.7:
        field = rng.standard_normal((h, w, 3), dtype=np.float32)
        if rng.random() < 0.5:  # sensor shot noise: std grows with the signal (same field for both)
            shot = field * np.float32(rng.uniform(0.15, 0.5))
        else:
            noise = field * np.float32(rng.uniform(1, 6))
    return Degradation(illumination, blur, kernel, noise, int(rng.integers(55, 96)), shot_noise=shot)


# --------------------------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, kind: str, split: str, hw: tuple[int, int], options: SceneOptions):
    h, w = hw
    if kind == "ui":
        return ui_background(rng, hw)
    if kind == "book":
        paper = backgrounds.procedural_background(rng, h, w, kind=5)
        tint = rng.uniform(0.9, 1.0, 3).astype(np.float32)  # aged / recycled paper
        return np.clip(paper * tint, 0, 255).astype(np.float32)
    return backgrounds.random_background(rng, split, h, w, user_photos=options.user_photos,
                                         user_mix=options.background_mix)


def _plans(rng: np.random.Generator, kind: str, split: str, hw: tuple[int, int]):
    """Block plans in drawing order (None: a v1 block)."""
    if kind == "classic":
        return [None] * int(rng.integers(1, 6))
    if kind == "sign":
        return [_sign_plan(rng, split, hw) for _ in range(int(rng.integers(1, 5)))]
    if kind == "poster":
        return _poster_plans(rng, split, hw)
    if kind == "ui":
        return [_ui_plan(rng, split, hw) for _ in range(int(rng.integers(5, 15)))]
    if kind == "book":
        return _page_plans(rng, split, hw)
    return [_receipt_plan(rng, split, hw)]


CURL_PROBABILITY = 0.5  # books and receipts


def random_curl(rng: np.random.Generator, hw: tuple[int, int]) -> PageCurl:
    h, w = hw
    bend = rng.uniform(0.03, 0.12) * h * rng.choice([-1, 1])
    return PageCurl(hw=hw, spine=float(rng.choice([0.0, w / 2, float(w)]) + rng.normal(0, 0.05 * w)),
                    a0=float(bend), a1=float(rng.uniform(-0.5, 0.5) * abs(bend)), squeeze=float(rng.uniform(-0.05, 0.05) * w))


def _spine_shading(curl: PageCurl, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 1) darkening towards the spine (the page bends away from the light there)."""
    h, w = curl.hw
    xs = np.arange(w, dtype=np.float32)
    dark = 1 - rng.uniform(0.15, 0.45) * np.exp(-((xs - curl.spine) / (rng.uniform(0.04, 0.12) * w)) ** 2)
    return np.broadcast_to(dark[None, :, None], (h, w, 1)).astype(np.float32)


def render_world_scene(rng: np.random.Generator, *, size: tuple[int, int], split: str,
                       options: SceneOptions) -> Scene:
    h, w = size
    weights = np.array([KIND_WEIGHTS[KINDS.index(k)] for k in options.kinds])
    kind = options.kinds[int(rng.choice(len(options.kinds), p=weights / weights.sum()))]
    if kind == "document":
        kind = "book" if rng.random() < 0.6 else "receipt"
    clean_bg = add_clutter(rng, _background(rng, kind, split, size, options))  # non-text marks: background
    degradation = world_degradation(rng, size, kind)
    plans = _plans(rng, kind, split, size)
    if kind in ("book", "receipt") and rng.random() < CURL_PROBABILITY:
        curl = random_curl(rng, size)
        if kind == "book":  # the whole image is the page: bend it (the text bends through its geometry)
            clean_bg = curl.apply(clean_bg, cv2.BORDER_REFLECT)
            shading = _spine_shading(curl, rng)
            degradation.illumination = shading if degradation.illumination is None else degradation.illumination * shading
        plans = [replace(plan, page=curl) for plan in plans]
    canvas = SceneCanvas(clean_bg)
    for plan in plans:
        size_scale = 1.0
        for _ in range(4):
            result = _try_block(rng, clean_bg, canvas.occupied, split, False, degradation.reach, len(canvas.blocks),
                                size_scale, plan=plan)
            if result == "too-big":
                # Pages and receipts keep their print size and lose lines; other blocks shrink.
                if plan is not None and plan.lines > 3:
                    plan = replace(plan, lines=int(plan.lines * 0.7))
                else:
                    size_scale *= 0.7
                continue
            if result is not None:
                break
        if result is None or result == "too-big":
            continue
        block, block_words, warped, region, plate = result
        if plate is not None:  # part of the background: drawn into both, under the text
            composite_plate(clean_bg, plate)
            composite_plate(canvas.image, plate)
        canvas.draw(block, block_words, warped, region)
    return canvas.scene(degradation, split, extra={"kind": kind})


def render_scene(rng: np.random.Generator, *, size: tuple[int, int], split: str = "train",
                 options: SceneOptions | None = None) -> Scene:
    """One scene of `size` (height, width) drawn with the split's fonts and photos; `options` selects v2
    scenes and user background photos (default: v1, built-in)."""
    if options is not None and options.scenes == "v2":
        return render_world_scene(rng, size=size, split=split, options=options)
    return render_classic_scene(rng, size=size, split=split, options=options)
