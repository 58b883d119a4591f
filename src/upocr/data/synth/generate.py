"""Write synthetic samples into the three benchmark layouts (see `upocr.data.layouts`).

Determinism: every sample is drawn from its own generator seeded by (seed, split, task, index), so
the bytes of a sample do not depend on how many worker processes ran or in which order. (They do
depend on the installed font/photo set and the PIL/OpenCV/libjpeg builds; the manifest records the
font set.)

Names are `synth_<split>_s<seed>_<index:06d>`, unique per split and seed, so several runs can share a
root. `<root>/synth-manifest.json` records every completed run; a run whose (task, split, seed)
already appears there is refused (pick another seed to add more data). A run that was interrupted
is not in the manifest and can simply be re-run: it rewrites the same bytes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from upocr.data import layouts
from upocr.data.synth import backgrounds, fonts
from upocr.data.synth.render import Scene, removal_mask, textseg_label
from upocr.data.synth.tampering import LOSSLESS_FILE, reprocess, tamper_scene
from upocr.data.synth.world import SCENE_KINDS, SceneOptions, render_scene
from upocr.tasks import Task

# 2: v2 receipts and book headings carry genuine emphasis (world.py: a larger, bold heading, a bold total);
# v1 scenes and the other v2 kinds keep their bytes.
# 3: a fifth of the v2 tampering files are saved lossless (PNG; tampering.LOSSLESS_FILE); the others and v1
# keep their bytes.
# 4: half of the v2 posters are designed (world.DESIGNED_POSTER: crisp text and badges over a photo that
# carries the camera); v2 bytes change for every seed (the kinds' mix), v1 keeps its bytes.
GENERATOR_VERSION = 4
SCENE_VERSIONS = ("v1", "v2")
MANIFEST_NAME = "synth-manifest.json"
SPLIT_IDS = {"train": 0, "test": 1}
# Every 8th training name goes to TextSeg's "val" list (the dataset trains on train + val, as the original).
VAL_EVERY = 8


class SynthError(ValueError):
    """Bad request (arguments, or a run that would mix with an existing one); one-line message."""


def sample_name(split: str, seed: int, index: int) -> str:
    return f"synth_{split}_s{seed}_{index:06d}"


def sample_rng(seed: int, split: str, task: Task, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split], int(task), index]))


def parse_size(size: int | str | Sequence[int]) -> tuple[int, int]:
    """512, "512", "640x480" (W x H) or (H, W) -> (height, width)."""
    if isinstance(size, (int, np.integer)):
        height = width = int(size)
    elif isinstance(size, str):
        parts = size.lower().split("x")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise SynthError(f"size {size!r}: expected N or WxH, e.g. 512 or 640x480") from None
        if len(values) == 1:
            height = width = values[0]
        elif len(values) == 2:
            width, height = values
        else:
            raise SynthError(f"size {size!r}: expected N or WxH, e.g. 512 or 640x480")
    else:
        height, width = (int(v) for v in size)
    if min(height, width) < 32 or max(height, width) > 8192:
        raise SynthError(f"size {width}x{height}: each side must be between 32 and 8192 pixels")
    return height, width


def _removal_pixels(rng: np.random.Generator, scene: Scene, options: SceneOptions | None) -> layouts.RemovalPixels:
    return layouts.RemovalPixels(scene.image, scene.background, removal_mask(scene), scene.degradation.jpeg_quality)


def _segmentation_pixels(rng: np.random.Generator, scene: Scene,
                         options: SceneOptions | None) -> layouts.SegmentationPixels:
    return layouts.SegmentationPixels(scene.image, textseg_label(scene), scene.degradation.jpeg_quality)


def _tampering_pixels(rng: np.random.Generator, scene: Scene, options: SceneOptions | None) -> layouts.TamperingPixels:
    v2 = options is not None and options.scenes == "v2"
    tampered = tamper_scene(rng, scene, methods="v2" if v2 else "v1", options=options)
    after: list[str] = []
    image = reprocess(rng, tampered.image, after) if v2 else tampered.image
    # Saved again at a new quality: in v1 real text is always double-compressed, tampered text not.
    quality = int(rng.integers(70, 96))
    if v2 and rng.random() < LOSSLESS_FILE:  # drawn last, so the other v2 files keep their bytes
        quality = None
    # What was done, for evaluations by kind of forgery (`layouts.read_tampering_edits`); words[i] is box i's.
    edits = {"generator_version": GENERATOR_VERSION, "photo": tampered.original_saved, "after_edits": after,
             "saved": "lossless" if quality is None else f"jpeg {quality}", "words": tampered.edits}
    return layouts.TamperingPixels(image, quality,
                                   [(*box, label) for box, label in zip(tampered.boxes, tampered.labels)], edits)


# What a rendered scene gives each task's sample: (rng, scene, options) -> the pixels its writer
# (`layouts.SAMPLE_WRITERS`) stores.
SAMPLE_PIXELS: dict[Task, Callable] = {Task.TEXT_REMOVAL: _removal_pixels, Task.TEXT_SEGMENTATION: _segmentation_pixels,
                                       Task.TAMPERED_TEXT_DETECTION: _tampering_pixels}


def sample_maker(task: Task | str | int) -> tuple[Callable, Callable]:
    """(`task`'s SAMPLE_PIXELS entry, its layout writer); SynthError for a task synth cannot make."""
    task = Task.parse(task)
    if task not in SAMPLE_PIXELS:
        raise SynthError(f"no synthetic {task.title} samples (add an entry to generate.py SAMPLE_PIXELS)")
    try:
        return SAMPLE_PIXELS[task], layouts.sample_writer(task)
    except ValueError as error:
        raise SynthError(str(error)) from None


def write_sample(root: Path, task: Task, split: str, seed: int, index: int, size: tuple[int, int],
                 options: SceneOptions | None = None) -> str:
    """Render and write one sample of `task`; returns its name."""
    pixels, write = sample_maker(task)
    name = sample_name(split, seed, index)
    rng = sample_rng(seed, split, task, index)
    scene = render_scene(rng, size=size, split=split, options=options)
    write(root, split, name, pixels(rng, scene, options))
    return name


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already


def _job(args: tuple) -> tuple[int, str]:
    root, task, split, seed, index, size, options = args
    return int(task), write_sample(Path(root), Task(task), split, seed, index, size, options)


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


def read_manifest(root: Path) -> dict:
    path = root / MANIFEST_NAME
    if not path.is_file():
        return {"format": 1, "runs": []}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SynthError(f"{path}: unreadable manifest ({error}); fix or remove it") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), list):
        raise SynthError(f"{path}: not a synth manifest (expected {{\"runs\": [...]}})")
    return manifest


def _checked_kinds(kinds: Sequence[str], scenes: str) -> tuple[str, ...]:
    """`kinds` as a tuple of distinct v2 scene kinds, or a SynthError naming what is wrong."""
    if scenes != "v2":
        raise SynthError("scene kinds choose among v2 scenes; add --scenes v2")
    kinds = tuple(dict.fromkeys(str(kind) for kind in kinds))
    unknown = [kind for kind in kinds if kind not in SCENE_KINDS]
    if unknown or not kinds:
        raise SynthError(f"scene kinds {', '.join(unknown) or '(none)'}: expected some of {', '.join(SCENE_KINDS)}")
    return kinds


def generate_dataset(
    out_root: str | Path,
    *,
    count: int,
    seed: int,
    split: str = "train",
    size: int | str | Sequence[int] = 512,
    tasks: Iterable[Task | str | int] | None = None,
    workers: int | None = None,
    progress: bool = True,
    scenes: str = "v1",
    background_dir: str | Path | None = None,
    background_mix: float = 0.5,
    kinds: Sequence[str] | None = None,
) -> dict:
    """Write `count` samples per task into the three layouts under `out_root`.

    `scenes` "v2" draws the scene kinds of `world.py` (`kinds`: only these of `SCENE_KINDS`, their weights
    renormalised; None: all, the default mix); `background_dir` adds a folder of text-free photos used for
    a `background_mix` share of the backgrounds (unreadable files: one warning each).

    Returns a summary dict (root, split, seed, count, size, tasks, names per task, seconds,
    samples_per_second). Raises SynthError for a bad request or a (task, split, seed) already
    generated under this root.
    """
    if split not in SPLIT_IDS:
        raise SynthError(f"split {split!r}: expected train or test")
    if int(count) < 1:
        raise SynthError(f"count {count}: must be at least 1")
    if int(seed) < 0:
        raise SynthError(f"seed {seed}: must be a non-negative integer")
    count, seed = int(count), int(seed)
    if scenes not in SCENE_VERSIONS:
        raise SynthError(f"scenes {scenes!r}: expected one of {', '.join(SCENE_VERSIONS)}")
    if not 0.0 <= float(background_mix) <= 1.0:
        raise SynthError(f"background mix {background_mix}: must be between 0 and 1")
    if kinds is not None:
        kinds = _checked_kinds(kinds, scenes)
    user_photos: tuple[str, ...] = ()
    if background_dir is not None:
        try:
            user_photos = backgrounds.list_user_photos(background_dir)
        except backgrounds.BackgroundError as error:
            raise SynthError(str(error)) from None
    options = SceneOptions(scenes=scenes, user_photos=user_photos, background_mix=float(background_mix),
                           **({"kinds": kinds} if kinds is not None else {}))
    height, width = parse_size(size)
    task_list = sorted(set(Task.parse_many(tasks))) if tasks is not None else sorted(Task)
    if not task_list:
        raise SynthError("no tasks selected")
    for task in task_list:  # before anything is written
        sample_maker(task)
    root = Path(out_root)
    if root.exists() and not root.is_dir():
        raise SynthError(f"{root}: exists and is not a folder")
    manifest = read_manifest(root)
    for run in manifest["runs"]:
        if run.get("split") == split and run.get("seed") == seed and run.get("task") in [t.short for t in task_list]:
            raise SynthError(
                f"{root / MANIFEST_NAME}: {run['task']} split={split} seed={seed} was already generated here "
                f"({run.get('count')} samples); use another --seed to add more data")
    root.mkdir(parents=True, exist_ok=True)

    jobs = [(str(root), int(task), split, seed, index, (height, width), options)
            for task in task_list for index in range(count)]
    workers = os.cpu_count() or 1 if workers is None else max(1, int(workers))
    workers = min(workers, len(jobs))
    names: dict[Task, list[str]] = {task: [] for task in task_list}
    started = time.perf_counter()
    bar = tqdm(total=len(jobs), desc=f"synth {split}", unit="sample", disable=not progress)
    try:
        if workers == 1:
            for job in jobs:
                task, name = _job(job)
                names[Task(task)].append(name)
                bar.update()
        else:
            # spawn, not fork: forking a process whose OpenCV/torch thread pools already ran can deadlock.
            context = multiprocessing.get_context("spawn")
            with context.Pool(workers, initializer=_worker_init) as pool:
                for task, name in pool.imap(_job, jobs, chunksize=4):
                    names[Task(task)].append(name)
                    bar.update()
    finally:
        bar.close()
    seconds = time.perf_counter() - started

    if Task.TEXT_SEGMENTATION in names:
        layouts.add_to_textseg_split(root, split, names[Task.TEXT_SEGMENTATION], VAL_EVERY)
    manifest = read_manifest(root)  # re-read: another run may have finished meanwhile
    for task in task_list:
        manifest["runs"].append({
            "task": task.short, "split": split, "seed": seed, "count": count, "size": [height, width],
            "first": names[task][0], "last": names[task][-1], "generator_version": GENERATOR_VERSION,
            "fonts": [Path(f.path).name for f in fonts.fonts_for_split(split, scenes == "v2")],
            "photos": [Path(p).name for p in backgrounds.photos_for_split(split)],
            "scenes": scenes,
            **({"kinds": list(kinds)} if kinds is not None else {}),
            **({"backgrounds": {"folder": str(background_dir), "files": len(user_photos), "mix": float(background_mix)}}
               if user_photos else {}),
        })
    layouts.write_json(root / MANIFEST_NAME, manifest)
    return {
        "root": str(root), "split": split, "seed": seed, "count": count, "size": (height, width),
        "tasks": [t.short for t in task_list], "names": {t.short: n for t, n in names.items()},
        "seconds": seconds, "samples_per_second": len(jobs) / max(seconds, 1e-9),
    }
