"""Tampered copies of a rendered scene, made the way a forger edits a photo.

The scene's image is first JPEG-compressed (the "original photo"). For each word chosen for
tampering, the word is erased (either OpenCV inpainting, or the true background "regenerated"
under it) and a different word of about the same length is drawn in its place with the same warp,
the same or a near font (another weight of the family), nearly the same size and colour, and its
own, slightly different blur and noise. The file is compressed again when written, so real text
carries double-compression and the scene's blur while tampered text does not: the traces real
tampering detectors learn from. Every word is labelled 1 (real) or 2 (tampered) with its
axis-aligned box.

v2 (`methods="v2"`, used by `--scenes v2`) mixes three edits, each leaving the traces real ones do:
  retype      as above, but 40 % of new words are blurrier than the scene instead of sharper, and
              each is saved once more at its own JPEG quality (its own compression history) before
              the photo is saved again;
  copy-move   a real word's patch (its polygon, feathered, or the whole box) copied, sometimes
              rescaled, to an empty place of the same image (the source stays real);
  splice      a word cut from ANOTHER rendered scene (its own background, font, light, blur, noise
              and JPEG) pasted into an empty place, scaled to the height of the image's words.
Added words get their own GT line (label 2); boxes never overlap, so the class map (0 background, 1
real, 2 tampered) read from the boxes is exact.

Every tampered box also gets a record of what was done to it (`TamperedScene.edits`, written beside the boxes
as `<split>_edits/<name>.json` by `upocr synth`): the edit's kind, and for a retype how the old word was erased,
the new word's blur against the scene's, its own noise and JPEG quality; for a paste its scale and edge. With the
file's history (`reprocess`'s steps, the last save) it lets an evaluation say which forgeries a detector misses
(`scripts/eval_tampering_words.py --by-edit`). Recording reads the draws; it draws nothing, so files are unchanged.

v2 also varies the history of the whole file, because in v1 genuine text always carries the scene's
blur and two JPEG saves, and a model trained on it learns "crisp, once-compressed text is tampered",
which flags most genuine text of real receipts and screenshots: the original photo is a lossless
file a third of the time, a quarter of the images are left untampered, and `reprocess` resamples,
sharpens or re-saves the finished file as a whole (real and tampered text alike), so only
differences within the image tell tampered text apart.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from upocr.data.synth import fonts, text
from upocr.data.synth.geometry import box_of, fill_polygons
from upocr.data.synth.render import Scene, composite, draw_word_layers
from upocr.data.synth.world import SceneOptions, render_scene

REAL, TAMPERED = 1, 2
MAX_EDITS = 5  # v2 edits per image
TAMPER_PROBABILITY = {"v1": 0.92, "v2": 0.75}  # share of images with at least one edit
LOSSLESS_ORIGINAL = 0.33  # v2: share of original photos that were never JPEG-compressed
# v2: share of finished files saved lossless (PNG: a screenshot, an exported poster, a scan), so that error
# levels that differ between words for their content alone (large crisp display type against small print,
# in a file no JPEG ever touched) are seen on genuine text too.
LOSSLESS_FILE = 0.2


@dataclass
class TamperedScene:
    image: np.ndarray  # (H, W, 3) uint8
    boxes: list[tuple[int, int, int, int]]  # x1, y1, x2, y2 (inclusive), one per word
    labels: list[int]  # 1 real, 2 tampered
    original: np.ndarray  # the photo before the edits: `image` differs from it only in tampered boxes
    # per box: None for a real word, else a JSON-ready record of the edit ({"kind": "retype" | "copy-move" |
    # "splice", ...}; see `_retype` and `_tamper_v2`)
    edits: list[dict | None] = field(default_factory=list)
    original_saved: str = ""  # how `original` was saved: "jpeg <quality>" or "lossless"


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1].copy()


def reprocess(rng: np.random.Generator, image: np.ndarray, steps: list[str] | None = None) -> np.ndarray:
    """What may happen to a whole file after it was made (v2): resampled down and up (a resize
    in a viewer or messenger), unsharp-masked, saved as JPEG once more; each by chance, in any mix.
    `steps`: a list the steps taken are appended to ("resampled 0.73", "unsharp-masked", "saved at 81")."""
    steps = [] if steps is None else steps
    out = image
    h, w = image.shape[:2]
    if rng.random() < 0.3:
        f = rng.uniform(0.5, 0.9)
        small = cv2.resize(out, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR if rng.random() < 0.5 else cv2.INTER_CUBIC)
        steps.append(f"resampled {f:.2f}")
    if rng.random() < 0.25:
        blurred = cv2.GaussianBlur(out.astype(np.float32), (0, 0), rng.uniform(0.8, 2.0))
        amount = rng.uniform(0.3, 1.2)
        out = np.clip(np.rint(out * (1 + amount) - blurred * amount), 0, 255).astype(np.uint8)
        steps.append("unsharp-masked")
    if rng.random() < 0.2:
        quality = int(rng.integers(50, 96))
        out = jpeg_roundtrip(out, quality)
        steps.append(f"saved at {quality}")
    return out


def tamper_scene(rng: np.random.Generator, scene: Scene, *, tamper_probability: float | None = None,
                 methods: str = "v1", options=None) -> TamperedScene:
    """Tampered copy of `scene`: v1 retypes words; v2 also copy-moves and splices (`options`: the
    scene options, for rendering splice donors). `tamper_probability`: default TAMPER_PROBABILITY."""
    if tamper_probability is None:
        tamper_probability = TAMPER_PROBABILITY[methods]
    if methods == "v2":
        return _tamper_v2(rng, scene, tamper_probability, options)
    h, w = scene.fill.shape
    photo = jpeg_roundtrip(scene.image, scene.degradation.jpeg_quality)
    history = f"jpeg {scene.degradation.jpeg_quality}"
    words = scene.words
    if not words:
        return TamperedScene(photo, [], [], photo, [], history)
    chosen: set[int] = set()
    if rng.random() < tamper_probability:
        count = int(rng.integers(1, max(1, int(np.ceil(len(words) * 0.5))) + 1))
        chosen = {int(i) for i in rng.choice(len(words), size=count, replace=False)}
    boxes = [wd.box for wd in words]
    labels = [TAMPERED if i in chosen else REAL for i in range(len(words))]
    edits: list[dict | None] = [None] * len(words)
    if not chosen:
        return TamperedScene(photo, boxes, labels, photo, edits, history)
    canvas = _retype(rng, scene, photo, chosen, boxes, edits)
    return TamperedScene(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), boxes, labels, photo, edits, history)


def _retype(rng: np.random.Generator, scene: Scene, photo: np.ndarray, chosen: set[int],
            boxes: list[tuple[int, int, int, int]], edits: list[dict | None], v2: bool = False) -> np.ndarray:
    """Erase the `chosen` words of `photo` and draw similar words in their place (float canvas);
    grows their `boxes` to what was drawn and puts each one's record in `edits`. `v2`: a new word is
    blurrier than the scene 40 % of the time, and carries its own JPEG round-trip (saved separately by
    the forger's editor)."""
    h, w = scene.fill.shape
    words = scene.words

    # 1. Erase the chosen words.
    erase = fill_polygons([words[i].polygon for i in sorted(chosen)], (h, w), 255)
    if rng.random() < 0.5:
        radius = int(rng.integers(2, 6))
        telea = rng.random() < 0.5
        out = cv2.inpaint(photo, erase, radius, cv2.INPAINT_TELEA if telea else cv2.INPAINT_NS)
        erased = "inpainted (Telea)" if telea else "inpainted (Navier-Stokes)"
    else:
        clean = jpeg_roundtrip(scene.background, scene.degradation.jpeg_quality)
        # A regenerated background rarely matches perfectly: a faint brightness/colour offset.
        clean = np.clip(clean.astype(np.float32) + rng.normal(0, 3, 3), 0, 255).astype(np.uint8)
        out = np.where(erase[..., None] > 0, clean, photo)
        erased = "background regenerated"
    canvas = out.astype(np.float32)

    # 2. Draw replacement words, each with its own degradation.
    illumination = scene.degradation.illumination
    for i in sorted(chosen):
        word = words[i]
        block = scene.blocks[word.block]
        style = copy.copy(block.style)
        if word.typeface is not None:  # a heading or bold line: its own font and size
            style.font, style.size = word.typeface
        original_font, original_size = style.font, style.size
        record = edits[i] = {"kind": "retype", "erased": erased, "font": "the word's"}
        if rng.random() < 0.4:
            near = fonts.near_fonts(style.font)
            style.font = near[int(rng.integers(len(near)))]
        new_text = text.similar_word(rng, word.script, word.text)
        if not fonts.covers(style.font, new_text):
            new_text, style.font = text.similar_word(rng, word.script, word.text), original_font
            if not fonts.covers(style.font, new_text):
                new_text = word.text[::-1]  # same glyphs, different word
        if style.font != original_font:
            record["font"] = "a near one"
        # Fit the new word to the old width (a forger matches the box), within +-15 % of the size.
        old_width = fonts.load_font(original_font.path, original_size).getlength(word.text)
        new_width = fonts.load_font(style.font.path, style.size).getlength(new_text)
        scale = np.clip(old_width / max(new_width, 1.0), 0.85, 1.15) * rng.uniform(0.97, 1.03)
        style.size = max(6, int(round(style.size * scale)))
        jitter = rng.normal(0, 8, 3).astype(np.float32)
        centre = np.clip(np.round(word.polygon.mean(0)).astype(int), 0, [w - 1, h - 1])
        light = 1.0 if illumination is None else float(illumination[centre[1], centre[0], 0])
        style.fill = np.clip((style.fill + jitter) * light, 0, 255).astype(np.float32)
        if style.fill_bottom is not None:
            style.fill_bottom = np.clip((style.fill_bottom + jitter) * light, 0, 255).astype(np.float32)
        if style.stroke is not None:
            style.stroke = np.clip(style.stroke * light, 0, 255).astype(np.float32)
        layers = draw_word_layers(style, [(new_text, word.origin)], block.geometry.layer_size)
        warped, region = block.geometry.warp(layers, (h, w))
        if warped.size == 0:
            continue
        sigma = scene.degradation.blur_sigma * rng.uniform(0.0, 0.8)
        record["blur"] = "as sharp or sharper"
        if v2 and rng.random() < 0.4:
            sigma = scene.degradation.blur_sigma + rng.uniform(0.4, 1.2)
            record["blur"] = "blurrier"
        record["blur_sigma"], record["scene_blur_sigma"] = round(float(sigma), 3), float(scene.degradation.blur_sigma)
        # the scene's own blur: a Gaussian (its sigma above), a kernel (defocus or motion; sigma 0) or none
        record["scene_blur"] = ("gaussian" if scene.degradation.blur_sigma > 0 else
                                "defocus or motion" if scene.degradation.motion_kernel is not None else "none")
        if sigma > 0.2:
            warped[..., :3] = cv2.GaussianBlur(np.ascontiguousarray(warped[..., :3]), (0, 0), sigma)
        coverage = np.maximum(warped[..., 1], warped[..., 2])
        patch = canvas[region]
        composite(patch, warped, style)
        record["noise"] = 0.0
        if rng.random() < 0.5:  # its own sensor noise, only where the new word is
            noise = rng.standard_normal(patch.shape, dtype=np.float32)
            strength = np.float32(rng.uniform(1, 5))  # drawn after the field, as always (the same files)
            noise *= strength
            patch += noise * coverage[..., None]
            record["noise"] = round(float(strength), 2)
        if v2:
            quality = int(rng.integers(50, 95))
            record["own_jpeg"] = quality
            recompressed = jpeg_roundtrip(np.clip(np.rint(patch), 0, 255).astype(np.uint8), quality)
            inside = cv2.dilate((coverage > 0.02).astype(np.uint8), np.ones((3, 3), np.uint8))[..., None] > 0
            patch[...] = np.where(inside, recompressed.astype(np.float32), patch)
        ys, xs = np.nonzero(coverage > 0.05)
        ys, xs = ys + region[0].start, xs + region[1].start
        if len(xs):
            x1, y1, x2, y2 = word.box
            drawn = box_of(np.array([[xs.min(), ys.min()], [xs.max(), ys.max()]], np.float32), (h, w))
            boxes[i] = (min(x1, drawn[0]), min(y1, drawn[1]), max(x2, drawn[2]), max(y2, drawn[3]))
    return canvas


# --------------------------------------------------------------------------------------------
# v2: copy-move and splice
# --------------------------------------------------------------------------------------------


def _word_patch(image: np.ndarray, word) -> tuple[np.ndarray, np.ndarray]:
    """(patch, polygon mask in [0, 1]) of `word`'s box in `image`."""
    x1, y1, x2, y2 = word.box
    polygon = word.polygon - np.float32([x1, y1])
    mask = fill_polygons([polygon], (y2 - y1 + 1, x2 - x1 + 1)).astype(np.float32)
    return image[y1:y2 + 1, x1:x2 + 1].astype(np.float32), mask


def _free_spot(rng: np.random.Generator, taken: np.ndarray, ph: int, pw: int, tries: int = 30):
    """Top-left (y, x) where a (ph, pw) patch touches no taken pixel, or None."""
    h, w = taken.shape
    if ph >= h - 2 or pw >= w - 2:
        return None
    for _ in range(tries):
        y, x = int(rng.integers(1, h - ph)), int(rng.integers(1, w - pw))
        if not taken[y - 1:y + ph + 1, x - 1:x + pw + 1].any():
            return y, x
    return None


def _paste(rng: np.random.Generator, canvas: np.ndarray, taken: np.ndarray, patch: np.ndarray, mask: np.ndarray,
           scale: float, record: dict) -> tuple[int, int, int, int] | None:
    """Paste `patch` (rescaled by `scale`) into a free place of `canvas`, through its feathered glyph
    mask (60 %) or as the whole rectangle (noted in `record`); returns the pasted box (inclusive) or None."""
    ph, pw = max(2, int(round(patch.shape[0] * scale))), max(2, int(round(patch.shape[1] * scale)))
    patch = cv2.resize(patch, (pw, ph), interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA)
    record["scale"] = round(float(scale), 3)
    if rng.random() < 0.6:
        alpha = cv2.resize(mask, (pw, ph), interpolation=cv2.INTER_LINEAR)
        alpha = np.clip(cv2.GaussianBlur(alpha, (0, 0), rng.uniform(0.5, 1.5)), 0, 1)
        record["edge"] = "the glyphs, feathered"
    else:
        alpha = np.ones((ph, pw), np.float32)
        record["edge"] = "the whole box"
    spot = _free_spot(rng, taken, ph, pw)
    if spot is None or not (alpha > 0.02).any():
        return None
    y, x = spot
    view = canvas[y:y + ph, x:x + pw]
    view[...] = view * (1 - alpha[..., None]) + patch * alpha[..., None]
    ys, xs = np.nonzero(alpha > 0.02)
    box = (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()), y + int(ys.max()))
    taken[box[1]:box[3] + 1, box[0]:box[2] + 1] = 1
    return box


def _donor_scene(rng: np.random.Generator, scene: Scene, options) -> Scene | None:
    """Another scene (other background, fonts, light, JPEG) to cut a word from."""
    h, w = scene.fill.shape
    base = options if options is not None else SceneOptions(scenes="v2")
    donor_options = replace(base, scenes="v2", kinds=("classic", "sign", "poster"))
    donor = render_scene(rng, size=(max(32, h // 2), max(32, w // 2)), split=scene.split, options=donor_options)
    return donor if donor.words else None


def _tamper_v2(rng: np.random.Generator, scene: Scene, tamper_probability: float, options) -> TamperedScene:
    h, w = scene.fill.shape
    lossless = rng.random() < LOSSLESS_ORIGINAL
    photo = scene.image if lossless else jpeg_roundtrip(scene.image, scene.degradation.jpeg_quality)
    history = "lossless" if lossless else f"jpeg {scene.degradation.jpeg_quality}"
    words = scene.words
    boxes = [wd.box for wd in words]
    labels = [REAL] * len(words)
    edits: list[dict | None] = [None] * len(words)
    if not words or rng.random() >= tamper_probability:
        return TamperedScene(photo, boxes, labels, photo, edits, history)
    # At most MAX_EDITS: a retyped word re-warps its whole block (a page), a splice renders a donor scene.
    count = int(rng.integers(1, min(MAX_EDITS, max(1, int(np.ceil(len(words) * 0.5)))) + 1))
    kinds = rng.choice(["retype", "copy-move", "splice"], size=count, p=[0.5, 0.25, 0.25])
    retyped = {int(i) for i in rng.choice(len(words), size=int((kinds == "retype").sum()), replace=False)}
    canvas = _retype(rng, scene, photo, retyped, boxes, edits, v2=True) if retyped else photo.astype(np.float32)
    for i in retyped:
        labels[i] = TAMPERED
    taken = np.zeros((h, w), np.uint8)
    for x1, y1, x2, y2 in boxes:
        taken[max(0, y1 - 2):y2 + 3, max(0, x1 - 2):x2 + 3] = 1
    heights = [wd.box[3] - wd.box[1] + 1 for wd in words]
    for kind in kinds[kinds != "retype"]:
        if kind == "copy-move":
            real = [i for i in range(len(words)) if i not in retyped]
            if not real:
                continue
            source = real[int(rng.integers(len(real)))]
            patch, mask = _word_patch(photo, words[source])
            scale = float(rng.uniform(0.8, 1.25)) if rng.random() < 0.4 else 1.0
            record = {"kind": "copy-move", "source": int(source)}
        else:
            donor = _donor_scene(rng, scene, options)
            if donor is None:
                continue
            donor_photo = jpeg_roundtrip(donor.image, int(rng.integers(50, 96)))
            word = donor.words[int(rng.integers(len(donor.words)))]
            patch, mask = _word_patch(donor_photo, word)
            target = heights[int(rng.integers(len(heights)))] * rng.uniform(0.8, 1.2)
            scale = float(np.clip(target / patch.shape[0], 0.3, 3.0))
            record = {"kind": "splice"}
        box = _paste(rng, canvas, taken, patch, mask, scale, record)
        if box is not None:
            boxes.append(box)
            labels.append(TAMPERED)
            edits.append(record)
    return TamperedScene(np.clip(np.rint(canvas), 0, 255).astype(np.uint8), boxes, labels, photo, edits, history)
