"""v2 scenes (`upocr synth --scenes v2`): text placed as in the world, with exact ground truth.

Each scene is one of the kinds in SCENE_KINDS (drawn by their weights):

  classic   the v1 scene's blocks (random blocks on a photo or texture);
  sign      plates/signs on a surface (the plate belongs to the background), perspective, light;
  poster    a headline with large glyphs (0.12-0.4 of the short side: at --size 1024 and more, glyphs
            bigger than a 256-px tile) and a few small lines; either photographed (the camera over all) or
            designed (a flyer or shop banner: text and badges set crisp and upright over a photo that
            already carries its camera's blur and noise);
  ui        a screenshot: flat theme, bars and buttons, crisp 10-18 px text, upright, no camera effects;
  document  a book page (whole image paper, 1-2 columns) or a receipt (paper strip on a surface), both
            at real print sizes: x-height 8-14 px on a 1000 px page (scaled down on smaller images);
            half of them curled; receipts mostly open with a larger, bold heading and may print a bold
            total (genuine emphasis: bolder or larger than the body is not a tampering label by itself).

A kind is one `SceneKind` entry: its weight, background, block planner, camera, curl probability and
sub-kinds. Camera effects (`camera.py`) are applied identically to the composite and to its text-free
twin, so outside the word polygons both stay equal. Most backgrounds also get non-text marks (barcodes,
rules, icons, railings, pen loops: `clutter.py`), drawn into the text-free background, so the model
learns to leave them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import cv2
import numpy as np

from upocr.data.synth import backgrounds, fonts, text
from upocr.data.synth.blocks import (MIN_FONT_PX, BlockPlan, BlockRecipe, LineFace, Plate, SceneCanvas,
                                     place_with_retries)
from upocr.data.synth.camera import classic_camera, photo_camera, screenshot_camera
from upocr.data.synth.classic import classic_plans, render_classic_scene
from upocr.data.synth.clutter import add_clutter
from upocr.data.synth.geometry import PageCurl
from upocr.data.synth.render import Degradation, Scene, contrasting_colour

# Share of sign and poster headlines set on a circular arc (badges, seals, round signs, logos), and the
# arc's span in degrees: real signs curve text up to half a circle and more, the sine "curve" barely.
ARC_PROBABILITY = 0.2
ARC_DEGREES = (50.0, 220.0)
# x-height / font size of common fonts (about 0.45-0.55): font px = x-height / this.
X_HEIGHT_RATIO = 0.5
CURL_PROBABILITY = 0.5  # books and receipts
# Genuine emphasis in documents (real receipts print the shop's name large and bold, and the total bold):
# without it, "bolder or larger than the other words" would only ever mean "retyped" in tampering data.
RECEIPT_HEADING_PROBABILITY = 0.75  # 1-2 lines at the top, 1.2-2x the body's size
RECEIPT_BOLD_LINE_PROBABILITY = 0.5  # one line of the lower half in bold (a total)
BOLD_HEADING_PROBABILITY = 0.5  # book headings in the family's bold
# Designed posters (e-commerce banners, flyers) set their text in a design program over a photo: the text
# is crisper than the photo under it, and a badge (one line on a rounded plate) sits tight around its
# words. Without them, a crisp line on a plate over a soft photo only ever meant "pasted" in tampering data,
# and a real poster's genuine badge line was flagged (docs/tampering-log.md, sessions 36-37).
DESIGNED_POSTER_SHARE = 0.5  # of posters


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


def _bold_or_same(rng: np.random.Generator, font: fonts.FontSpec) -> fonts.FontSpec:
    bold = fonts.bold_fonts(font)
    return bold[int(rng.integers(len(bold)))] if bold else font


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


def poster_plans(rng: np.random.Generator, split: str, hw: tuple[int, int]) -> list[BlockPlan]:
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


def _badge_plan(rng: np.random.Generator, split: str, script: str, hw: tuple[int, int]) -> BlockPlan:
    """One line on a tight, rounded, vivid plate ("20 % off", "order now")."""
    size = max(MIN_FONT_PX, int(rng.uniform(0.035, 0.09) * min(hw)))
    colour = _vivid_colour(rng)
    plate = Plate(colour=colour, padding=int(size * rng.uniform(0.15, 0.5)), corner=int(size * rng.uniform(0, 0.6)))
    return BlockPlan(font=_font(rng, split, script, ("sans", "display")), script=script, size=size, lines=1,
                     words_per_line=int(rng.integers(1, 5)), max_width=hw[1] * 0.85, angle=0.0, perspective=0.0,
                     align="center", plate=plate, min_contrast=90.0)


def designed_poster_plans(rng: np.random.Generator, split: str, hw: tuple[int, int]) -> list[BlockPlan]:
    """A poster as a design program sets it: flat and upright (arcs kept), the headline, one or two
    badges, then the small lines."""
    flat = [replace(plan, angle=0.0, perspective=0.0) for plan in poster_plans(rng, split, hw)]
    badges = [_badge_plan(rng, split, flat[0].script, hw) for _ in range(int(rng.integers(1, 3)))]
    return flat[:1] + badges + flat[1:]


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


def page_plans(rng: np.random.Generator, split: str, hw: tuple[int, int]) -> list[BlockPlan]:
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
        heading = _bold_or_same(rng, font) if rng.random() < BOLD_HEADING_PROBABILITY else font
        body.append(BlockPlan(font=heading, script=script, size=int(size * rng.uniform(1.4, 2.5)), lines=1,
                              words_per_line=4, max_width=w * 0.8, angle=angle, perspective=perspective,
                              min_contrast=100.0, ink=ink))
    return body


def _receipt_plan(rng: np.random.Generator, split: str, hw: tuple[int, int]) -> BlockPlan:
    script = "english" if rng.random() < 0.7 else _script(rng, split)
    size = print_size(rng, hw)
    paper = np.clip(rng.uniform(225, 250) + rng.normal(0, 4, 3), 0, 255).astype(np.float32)
    plate = Plate(colour=paper, padding=int(size * rng.uniform(0.8, 2.0)), corner=0, texture_kind=5)
    font = _font(rng, split, script, ("mono",))
    lines = max(4, min(40, int(0.7 * hw[0] / (size * 1.3))))
    return BlockPlan(font=font, script=script, size=size, lines=lines, words_per_line=int(rng.integers(2, 6)),
                     max_width=hw[1] * rng.uniform(0.3, 0.6), angle=float(rng.normal(0, 4)),
                     perspective=float(rng.uniform(0, 0.06)), align=str(rng.choice(["left", "center"])), plate=plate,
                     min_contrast=100.0, ink=ink_colour(rng), line_faces=_receipt_emphasis(rng, split, script, font, lines))


def _receipt_emphasis(rng: np.random.Generator, split: str, script: str, font: fonts.FontSpec,
                      lines: int) -> tuple[LineFace, ...]:
    """A receipt's lines in another face: the shop's name at the top (larger; bold, or a sans bold), and a
    bold line in the lower half (the total)."""
    faces = []
    if rng.random() < RECEIPT_HEADING_PROBABILITY:
        heading = _bold_or_same(rng, font if rng.random() < 0.5 else _font(rng, split, script, ("sans",)))
        scale = float(rng.uniform(1.2, 2.0))
        faces += [LineFace(line, heading, scale) for line in range(int(rng.choice([1, 1, 2])))]
    if rng.random() < RECEIPT_BOLD_LINE_PROBABILITY:
        faces.append(LineFace(-int(rng.integers(1, max(2, lines // 2))), _bold_or_same(rng, font)))
    return tuple(faces)


def sign_plans(rng: np.random.Generator, split: str, hw: tuple[int, int]) -> list[BlockRecipe]:
    return [_sign_plan(rng, split, hw) for _ in range(int(rng.integers(1, 5)))]


def ui_plans(rng: np.random.Generator, split: str, hw: tuple[int, int]) -> list[BlockRecipe]:
    return [_ui_plan(rng, split, hw) for _ in range(int(rng.integers(5, 15)))]


def receipt_plans(rng: np.random.Generator, split: str, hw: tuple[int, int]) -> list[BlockRecipe]:
    return [_receipt_plan(rng, split, hw)]


# --------------------------------------------------------------------------------------------
# Backgrounds and page curl
# --------------------------------------------------------------------------------------------


def photo_or_texture(rng: np.random.Generator, split: str, hw: tuple[int, int], options: SceneOptions) -> np.ndarray:
    """A built-in photo crop or texture of the split, or one of the user's photos (`options`)."""
    return backgrounds.random_background(rng, split, hw[0], hw[1], user_photos=options.user_photos,
                                         user_mix=options.background_mix)


def camera_photo(rng: np.random.Generator, split: str, hw: tuple[int, int], options: SceneOptions) -> np.ndarray:
    """A photo as a designer gets it: its camera's light, blur and noise already in it (the text drawn on
    top later gets none of them)."""
    photo = photo_or_texture(rng, split, hw, options)
    return photo_camera(rng, hw).apply(photo).astype(np.float32)


def paper_background(rng: np.random.Generator, split: str, hw: tuple[int, int], options: SceneOptions) -> np.ndarray:
    """A page filling the image: paper texture, aged or recycled tint."""
    paper = backgrounds.procedural_background(rng, hw[0], hw[1], kind=5)
    tint = rng.uniform(0.9, 1.0, 3).astype(np.float32)
    return np.clip(paper * tint, 0, 255).astype(np.float32)


def ui_background(rng: np.random.Generator, split: str, hw: tuple[int, int], options: SceneOptions) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------
# Scene kinds
# --------------------------------------------------------------------------------------------

Background = Callable[[np.random.Generator, str, tuple[int, int], "SceneOptions"], np.ndarray]
Planner = Callable[[np.random.Generator, str, tuple[int, int]], list[BlockRecipe]]
Camera = Callable[[np.random.Generator, tuple[int, int]], Degradation]


@dataclass(frozen=True)
class SceneKind:
    """One kind of v2 scene. `weight`: its share of the mix (renormalised over the kinds asked for); a
    sub-kind's: its share of its parent. A kind with `sub_kinds` draws one of them instead of itself."""

    name: str
    weight: float
    background: Background | None = None  # (rng, split, hw, options) -> (H, W, 3) float32, before clutter
    plans: Planner | None = None  # (rng, split, hw) -> block recipes, in drawing order
    camera: Camera | None = None  # (rng, hw) -> degradation shared by the image and its text-free twin
    curl_probability: float = 0.0  # share of scenes whose blocks bend with a curled page
    page_is_image: bool = False  # the curled page is the whole image: the background bends too
    sub_kinds: tuple[SceneKind, ...] = ()

    def __post_init__(self) -> None:
        drawn = (self.background, self.plans, self.camera)
        if bool(self.sub_kinds) == all(part is not None for part in drawn):
            raise ValueError(f"scene kind {self.name!r}: give either background, plans and camera, or sub-kinds")

    @property
    def leaves(self) -> tuple[SceneKind, ...]:
        """The kinds that draw this kind's scenes: its sub-kinds, or itself."""
        return self.sub_kinds or (self,)

    def resolve(self, rng: np.random.Generator) -> SceneKind:
        """This kind, or one of its sub-kinds by their weights."""
        if not self.sub_kinds:
            return self
        draw, total = rng.random(), 0.0
        for sub_kind in self.sub_kinds:
            total += sub_kind.weight
            if draw < total:
                return sub_kind
        return self.sub_kinds[-1]


BOOK = SceneKind("book", 0.6, paper_background, page_plans, photo_camera, curl_probability=CURL_PROBABILITY,
                 page_is_image=True)
RECEIPT = SceneKind("receipt", 0.4, photo_or_texture, receipt_plans, photo_camera, curl_probability=CURL_PROBABILITY)
PHOTOGRAPHED_POSTER = SceneKind("poster", 1 - DESIGNED_POSTER_SHARE, photo_or_texture, poster_plans, photo_camera)
DESIGNED_POSTER = SceneKind("designed-poster", DESIGNED_POSTER_SHARE, camera_photo, designed_poster_plans,
                            screenshot_camera)
SCENE_KINDS: dict[str, SceneKind] = {kind.name: kind for kind in (
    SceneKind("classic", 0.2, photo_or_texture, classic_plans, classic_camera),
    SceneKind("sign", 0.22, photo_or_texture, sign_plans, photo_camera),
    SceneKind("poster", 0.16, sub_kinds=(PHOTOGRAPHED_POSTER, DESIGNED_POSTER)),
    SceneKind("ui", 0.12, ui_background, ui_plans, screenshot_camera),
    SceneKind("document", 0.3, sub_kinds=(BOOK, RECEIPT)),
)}


def scene_kind(name: str) -> SceneKind:
    try:
        return SCENE_KINDS[name]
    except KeyError:
        raise ValueError(f"unknown scene kind {name!r}; expected one of {', '.join(SCENE_KINDS)}") from None


@dataclass(frozen=True)
class SceneOptions:
    """What `render_scene` draws: `scenes` v1 (the original generator) or v2 (this module), and an
    optional folder's photos (`user_photos`) used for a `background_mix` share of backgrounds."""

    scenes: str = "v1"
    user_photos: tuple[str, ...] = ()
    background_mix: float = 0.5
    kinds: tuple[str, ...] = tuple(SCENE_KINDS)  # v2 kinds to draw from (their weights renormalised)


# --------------------------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------------------------


def drawn_kinds() -> list[SceneKind]:
    """Every kind that draws scenes itself: the SCENE_KINDS entries, sub-kinds in place of their parent."""
    return [leaf for kind in SCENE_KINDS.values() for leaf in kind.leaves]


def render_world_scene(rng: np.random.Generator, *, size: tuple[int, int], split: str,
                       options: SceneOptions) -> Scene:
    """A v2 scene of one of `options.kinds`, drawn by their weights."""
    kinds = [scene_kind(name) for name in options.kinds]
    weights = np.array([kind.weight for kind in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))].resolve(rng)
    return render_kind_scene(rng, kind, size=size, split=split, options=options)


def render_kind_scene(rng: np.random.Generator, kind: SceneKind, *, size: tuple[int, int], split: str,
                      options: SceneOptions) -> Scene:
    """A scene of `kind` (one that draws itself: no sub-kinds)."""
    clean_bg = add_clutter(rng, kind.background(rng, split, size, options))  # non-text marks: background
    degradation = kind.camera(rng, size)
    plans = kind.plans(rng, split, size)
    if kind.curl_probability and rng.random() < kind.curl_probability:
        curl = random_curl(rng, size)
        if kind.page_is_image:  # bend the whole image (the text bends through its geometry)
            clean_bg = curl.apply(clean_bg, cv2.BORDER_REFLECT)
            shading = _spine_shading(curl, rng)
            degradation.illumination = shading if degradation.illumination is None else degradation.illumination * shading
        plans = [replace(plan, page=curl) for plan in plans]
    canvas = SceneCanvas(clean_bg)
    for plan in plans:
        placed = place_with_retries(rng, plan, canvas, split, degradation.reach)
        if placed is not None:
            canvas.draw(placed)
    return canvas.scene(degradation, split, extra={"kind": kind.name})


def render_scene(rng: np.random.Generator, *, size: tuple[int, int], split: str = "train",
                 options: SceneOptions | None = None) -> Scene:
    """One scene of `size` (height, width) drawn with the split's fonts and photos; `options` selects v2
    scenes and user background photos (default: v1, built-in)."""
    if options is not None and options.scenes == "v2":
        return render_world_scene(rng, size=size, split=split, options=options)
    if options is None:
        return render_classic_scene(rng, size=size, split=split)
    return render_classic_scene(rng, size=size, split=split, user_photos=options.user_photos,
                                user_mix=options.background_mix)
