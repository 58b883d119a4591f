"""Synthetic data generator: determinism, layouts, value sets, ground-truth consistency, partition."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from upocr.cli import main as cli_main
from upocr.data import layouts
from upocr.data.datasets import build_dataset
from upocr.data.synth import SynthError, generate_dataset, parse_size
from upocr.data.synth import backgrounds, fonts
from upocr.data.synth.blocks import MIN_FONT_PX
from upocr.data.synth.geometry import fill_polygons
from upocr.data.synth.render import textseg_label
from upocr.data.synth.world import render_scene
from upocr.data.synth.tampering import tamper_scene
from upocr.tasks import Task

SIZE = 96


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != "synth-manifest.json"}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, count=3, seed=5, split="train", size=SIZE, workers=1, progress=False)
    return root


def test_same_seed_gives_same_bytes_with_any_worker_count(tmp_path: Path, synth_root: Path):
    generate_dataset(tmp_path / "b", count=3, seed=5, split="train", size=SIZE, workers=2, progress=False)
    first, second = _tree_bytes(synth_root), _tree_bytes(tmp_path / "b")
    assert first.keys() == second.keys() and len(first) == 3 * (3 + 2 + 3) + 1  # + split.json
    assert first == second


def test_different_seed_gives_different_images(tmp_path: Path, synth_root: Path):
    generate_dataset(tmp_path, count=1, seed=6, split="train", size=SIZE, tasks=["removal"], workers=1, progress=False)
    a = (synth_root / "TextRemoval/SCUT-ENS/train/image/synth_train_s5_000000.jpg").read_bytes()
    b = (tmp_path / "TextRemoval/SCUT-ENS/train/image/synth_train_s6_000000.jpg").read_bytes()
    assert a != b


def test_layouts_are_readable_with_the_benchmark_readers(synth_root: Path):
    names = [f"synth_train_s5_{i:06d}" for i in range(3)]
    assert [s.name for s in layouts.removal_samples(synth_root, "train")] == names
    assert [s.name for s in layouts.tampering_samples(synth_root, "train")] == names
    split = json.loads((synth_root / layouts.SEGMENTATION_DIR / "split.json").read_text())
    assert sorted(split["train"] + split["val"]) == names and split["test"] == []
    for task in Task:
        item = build_dataset(task, synth_root, "train", size=64, augment=False)[0]
        assert item["image"].shape == item["target"].shape == (3, 64, 64)


def test_label_value_sets(synth_root: Path):
    for sample in layouts.segmentation_samples(synth_root, "train"):
        raw = np.asarray(layouts.Image.open(sample.label))
        assert raw.shape == (SIZE, SIZE) and set(np.unique(raw)) <= {0, 100, 200, 255}
    masks = [layouts.read_removal_mask(s.mask) for s in layouts.removal_samples(synth_root, "train")]
    assert all(set(np.unique(m)) <= {0, 1} for m in masks) and any((m == 0).any() for m in masks)
    boxes = [b for s in layouts.tampering_samples(synth_root, "train") for b in layouts.read_tampering_boxes(s.gt)]
    assert boxes and {b[4] for b in boxes} <= {1, 2}
    assert all(0 <= x1 <= x2 < SIZE and 0 <= y1 <= y2 < SIZE for x1, y1, x2, y2, _ in boxes)


def test_outside_the_text_mask_image_and_label_agree(synth_root: Path):
    """On disk: equal up to the JPEG round-trip (8x8 blocks touching text may differ)."""
    import cv2

    for sample in layouts.removal_samples(synth_root, "train"):
        image = np.asarray(layouts.read_rgb(sample.image), np.float32)
        label = np.asarray(layouts.read_rgb(sample.label), np.float32)
        non_text = layouts.read_removal_mask(sample.mask).astype(np.uint8)
        far = cv2.erode(non_text, np.ones((17, 17), np.uint8)).astype(bool)  # away from blocks with text
        assert far.sum() > SIZE * SIZE // 10
        assert np.abs(image - label)[far].mean() < 1.0


def test_scene_ground_truth_is_exact_before_compression():
    for index in range(4):
        scene = render_scene(np.random.default_rng([11, index]), size=(SIZE, SIZE), split="train")
        assert scene.words
        inside = fill_polygons([w.polygon for w in scene.words], (SIZE, SIZE)).astype(bool)
        assert np.array_equal(scene.image[~inside], scene.background[~inside])
        assert not np.array_equal(scene.image[inside], scene.background[inside])
        label = textseg_label(scene)
        assert (label[~inside] == 0).all()  # every text/effect pixel lies in a word polygon
        assert (label == 100).any()


def test_tampering_replaces_some_words_and_labels_them():
    scene = render_scene(np.random.default_rng(3), size=(128, 128), split="train")
    result = tamper_scene(np.random.default_rng(4), scene, tamper_probability=1.0)
    assert len(result.boxes) == len(result.labels) == len(scene.words)
    assert 2 in result.labels
    assert result.image.shape == scene.image.shape
    # Tampered boxes changed, real boxes only carry the JPEG round-trip of the "original photo".
    for (x1, y1, x2, y2), label, word in zip(result.boxes, result.labels, scene.words):
        if label == 2:
            assert (x1, y1, x2, y2) != (-1, -1, -1, -1)
            assert x1 <= word.box[0] and x2 >= word.box[2]


def test_train_and_test_use_disjoint_fonts_and_photos():
    train_fonts, test_fonts = fonts.fonts_for_split("train"), fonts.fonts_for_split("test")
    assert train_fonts and test_fonts
    assert not {f.family for f in train_fonts} & {f.family for f in test_fonts}
    assert not {f.path for f in train_fonts} & {f.path for f in test_fonts}
    assert not set(backgrounds.PHOTOS["train"]) & set(backgrounds.PHOTOS["test"])


def test_train_and_test_runs_share_a_root_and_split_json(tmp_path: Path):
    generate_dataset(tmp_path, count=2, seed=1, split="train", size=64, tasks=["segmentation"], workers=1,
                     progress=False)
    generate_dataset(tmp_path, count=2, seed=1, split="test", size=64, tasks=["segmentation", "removal"],
                     workers=1, progress=False)
    split = json.loads((tmp_path / layouts.SEGMENTATION_DIR / "split.json").read_text())
    assert split["test"] == ["synth_test_s1_000000", "synth_test_s1_000001"]
    assert all(n.startswith("synth_train_s1_") for n in split["train"] + split["val"])
    assert [s.name for s in layouts.removal_samples(tmp_path, "test")] == split["test"]
    runs = json.loads((tmp_path / "synth-manifest.json").read_text())["runs"]
    assert [(r["task"], r["split"]) for r in runs] == [("segmentation", "train"), ("removal", "test"),
                                                       ("segmentation", "test")]


def test_repeating_a_seed_is_refused_but_a_new_seed_adds(tmp_path: Path):
    generate_dataset(tmp_path, count=1, seed=2, size=64, tasks=["tampering"], workers=1, progress=False)
    before = _tree_bytes(tmp_path)
    with pytest.raises(SynthError, match="seed=2 was already generated"):
        generate_dataset(tmp_path, count=1, seed=2, size=64, tasks=["tampering"], workers=1, progress=False)
    assert _tree_bytes(tmp_path) == before
    generate_dataset(tmp_path, count=1, seed=3, size=64, tasks=["tampering"], workers=1, progress=False)
    assert len(layouts.tampering_samples(tmp_path, "train")) == 2


def test_cli_writes_and_refuses_with_exit_code(tmp_path: Path, capsys):
    args = ["synth", "--out", str(tmp_path), "--count", "1", "--seed", "0", "--size", "80x64", "--tasks", "removal",
            "--workers", "1"]
    assert cli_main(args) == 0
    image = layouts.read_rgb(tmp_path / "TextRemoval/SCUT-ENS/train/image/synth_train_s0_000000.jpg")
    assert image.size == (80, 64)
    assert cli_main(args) == 2
    assert "already generated" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [(512, (512, 512)), ("640x480", (480, 640)), ("96", (96, 96))])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["big", "10x10", "1x2x3"])
def test_parse_size_rejects_bad_sizes(bad):
    with pytest.raises(SynthError):
        parse_size(bad)


# --------------------------------------------------------------------------------------------
# v2: user backgrounds, scene kinds, camera effects, scripts
# --------------------------------------------------------------------------------------------


def _magenta_folder(folder: Path, bad: bool = True) -> Path:
    """Two magenta PNGs (a colour no built-in background has) and, with `bad`, a broken JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate([(40, 30), (200, 120)]):
        pixels = np.zeros(size[::-1] + (3,), np.uint8)
        pixels[..., 0], pixels[..., 2] = 250, 240 - 20 * i
        Image.fromarray(pixels).save(folder / f"photo{i}.png")
    if bad:
        (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    return folder


def test_backgrounds_folder_is_used_and_a_bad_file_is_named(tmp_path: Path, capsys):
    folder = _magenta_folder(tmp_path / "photos")
    args = ["synth", "--out", str(tmp_path / "data"), "--count", "2", "--size", "64", "--tasks", "removal",
            "--workers", "1", "--backgrounds", str(folder), "--background-mix", "1"]
    assert cli_main(args) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "broken.jpg" in line]
    assert len(warnings) == 1 and "not a readable image" in warnings[0]
    means = [np.asarray(layouts.read_rgb(s.label), np.float32).mean((0, 1))
             for s in layouts.removal_samples(tmp_path / "data", "train")]
    # Magenta (green far below red and blue) shows through; a v1 document scene covers it with 85 % paper.
    assert any(m[1] < 0.5 * min(m[0], m[2]) for m in means)
    photos = backgrounds.list_user_photos(folder, warn=lambda message: None)
    for index in range(5):
        crop = backgrounds.random_background(np.random.default_rng(index), "train", 48, 64, user_photos=photos,
                                             user_mix=1.0)
        assert crop.shape == (48, 64, 3) and (crop[..., 1] < 0.5 * np.minimum(crop[..., 0], crop[..., 2])).all()
    run = json.loads((tmp_path / "data/synth-manifest.json").read_text())["runs"][0]
    assert run["backgrounds"]["files"] == 2 and run["scenes"] == "v1"


def test_backgrounds_folder_without_images_is_one_line_error(tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/broken.png").write_bytes(b"\x89PNG garbage")
    args = ["synth", "--out", str(tmp_path / "data"), "--count", "1", "--size", "64", "--workers", "1",
            "--backgrounds", str(tmp_path / "empty")]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("upocr synth: error:") and "no readable images" in err[-1] and "empty" in err[-1]
    assert not (tmp_path / "data").exists()


def test_annotated_evaluation_images_are_refused_as_backgrounds(tmp_path: Path):
    folder = _magenta_folder(tmp_path / "photos", bad=False)
    (folder / "photo1.json").write_text(json.dumps({"polygons": [{"points": [[0, 0], [5, 0], [5, 5]], "text": "a"}]}))
    (folder / "photo1_label.png").write_bytes((folder / "photo0.png").read_bytes())  # sorts after photo1.json's image
    with pytest.raises(SynthError, match="photo1.png: has text annotations.*evaluation data"):
        generate_dataset(tmp_path / "data", count=1, seed=0, size=64, background_dir=folder, workers=1, progress=False)


def test_default_scenes_ignore_the_v2_mix_and_keep_v1_bytes(tmp_path: Path, synth_root: Path):
    """--scenes v1 is the default: the same bytes as before v2 existed (fixture made without options)."""
    generate_dataset(tmp_path, count=3, seed=5, split="train", size=SIZE, workers=1, progress=False, scenes="v1")
    assert _tree_bytes(tmp_path) == _tree_bytes(synth_root)


@pytest.mark.parametrize("kind", ["classic", "sign", "poster", "ui", "document"])
def test_v2_kinds_have_exact_ground_truth(kind):
    """Before JPEG, image and text-free label are equal outside the word polygons (same lighting, blur,
    shot noise), every labelled pixel lies inside them, and each kind draws text."""
    from upocr.data.synth.world import SCENE_KINDS, SceneOptions

    options = SceneOptions(scenes="v2", kinds=(kind,))
    leaves = {leaf.name for leaf in SCENE_KINDS[kind].leaves}  # what the kind draws
    for index in range(3):
        scene = render_scene(np.random.default_rng([21, index]), size=(160, 192), split="train", options=options)
        assert scene.words and scene.extra["kind"] in leaves
        inside = fill_polygons([w.polygon for w in scene.words], (160, 192)).astype(bool)
        assert np.array_equal(scene.image[~inside], scene.background[~inside])
        assert not np.array_equal(scene.image[inside], scene.background[inside])
        label = textseg_label(scene)
        # Labelled pixels exist (glyph, or at tiny blurred print sizes only the "ignore" fringe: a receipt
        # at 8 px on this 160 x 192 image can peak at 0.4 glyph coverage), all inside the word polygons.
        assert (label[~inside] == 0).all() and (label > 0).any()


@pytest.mark.parametrize("mark", ["barcode", "rules", "icon", "arcs", "poles", "code_matrix", "pen_loop"])
def test_clutter_marks_draw_a_coverage_map(mark):
    from upocr.data.synth.clutter import MARKS

    drawn = [MARKS[mark](np.random.default_rng(seed), (120, 200)) for seed in range(6)]
    for coverage in drawn:
        assert coverage.shape == (120, 200) and coverage.dtype == np.float32
        assert coverage.min() >= 0 and coverage.max() <= 1
    assert all(0 < (c > 0.5).mean() < 0.5 for c in drawn)  # something, never the whole image


def test_clutter_is_painted_into_the_background_the_label_keeps(monkeypatch):
    """The marks change the text-free background itself (so image and label both show them)."""
    from upocr.data.synth import world
    from upocr.data.synth.clutter import add_clutter
    from upocr.data.synth.world import SceneOptions

    background = np.full((96, 128, 3), 200, np.float32)
    assert add_clutter(np.random.default_rng(0), background, probability=0.0) is background
    marked = add_clutter(np.random.default_rng(0), background, probability=1.0)
    assert marked.shape == background.shape and marked.dtype == np.float32
    assert (np.abs(marked - background).max(axis=2) > 20).mean() > 0.002
    np.testing.assert_array_equal(marked, add_clutter(np.random.default_rng(0), background, probability=1.0))
    # Every v2 scene's background goes through it before any text is drawn.
    seen = []
    monkeypatch.setattr(world, "add_clutter", lambda rng, bg: seen.append(bg.copy()) or bg)
    render_scene(np.random.default_rng(1), size=(96, 128), split="train", options=SceneOptions(scenes="v2"))
    assert len(seen) == 1 and seen[0].shape == (96, 128, 3)


def test_v2_is_deterministic_and_independent_of_other_samples(tmp_path: Path):
    """Same bytes on a re-run, and a sample does not depend on what the process drew before it (what
    makes the worker count irrelevant; the spawn-pool path itself is tested with v1 above)."""
    from upocr.data.synth.generate import write_sample
    from upocr.data.synth.world import SceneOptions

    kwargs = dict(count=2, seed=9, size=SIZE, scenes="v2", progress=False, workers=1)
    generate_dataset(tmp_path / "a", **kwargs)
    generate_dataset(tmp_path / "b", **kwargs)
    first, second = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert len(first) == 2 * 8 + 1 and first == second
    write_sample(tmp_path / "c", Task.TAMPERED_TEXT_DETECTION, "train", 9, 1, (SIZE, SIZE), SceneOptions(scenes="v2"))
    alone = _tree_bytes(tmp_path / "c")
    assert alone and all(first[name] == data for name, data in alone.items())
    for task in Task:  # and readable by the training datasets
        assert build_dataset(task, tmp_path / "a", "train", size=64, augment=False)[0]["image"].shape == (3, 64, 64)


def test_shot_noise_changes_only_where_the_signal_changed():
    from upocr.data.synth.render import Degradation

    rng = np.random.default_rng(0)
    field = rng.standard_normal((32, 32, 3), dtype=np.float32) * np.float32(0.4)
    degradation = Degradation(None, 0.0, None, None, 90, shot_noise=field)
    clean = np.full((32, 32, 3), 120, np.float32)
    texted = clean.copy()
    texted[10:14, 10:20] = 20
    a, b = degradation.apply(texted), degradation.apply(clean)
    differs = (a != b).any(2)
    assert differs[10:14, 10:20].any() and not differs[~np.pad(np.ones((4, 10), bool), ((10, 18), (10, 12)))].any()
    assert (b != 120).any()  # the noise is there


def test_poster_headlines_exceed_a_256_px_tile_and_print_has_real_x_height():
    from upocr.data.synth.world import X_HEIGHT_RATIO, poster_plans, print_size

    headlines = [poster_plans(np.random.default_rng(i), "train", (1024, 1024))[0].size for i in range(20)]
    assert max(headlines) > 256 and min(headlines) >= 0.12 * 1024 - 1
    x_heights = [print_size(np.random.default_rng(i), (1200, 900)) * X_HEIGHT_RATIO for i in range(50)]
    assert 7.5 <= min(x_heights) and max(x_heights) <= 14.5


def test_designed_posters_set_crisp_upright_text_and_badges_over_a_camera_photo():
    """A designed poster's camera is in its photo (blurred or noisy before any text), its text gets none
    (the scene's own degradation is JPEG only), and it carries 1-2 badges: one upright line on a tight plate."""
    from upocr.data.synth import world

    plans = [world.designed_poster_plans(np.random.default_rng(i), "train", (512, 512)) for i in range(20)]
    for blocks in plans:
        assert all(plan.angle == 0 and plan.perspective == 0 for plan in blocks)
        badges = [plan for plan in blocks if plan.plate is not None]
        assert 1 <= len(badges) <= 2 and all(b.lines == 1 and b.plate.padding <= 0.5 * b.size for b in badges)
    options = world.SceneOptions(scenes="v2")
    photo_changed = 0
    for index in range(6):
        scene = world.render_kind_scene(np.random.default_rng([37, index]), world.DESIGNED_POSTER, size=(128, 128),
                                        split="train", options=options)
        d = scene.degradation
        assert d.illumination is None and d.blur_sigma == 0 and d.motion_kernel is None
        assert d.noise is None and d.shot_noise is None
        assert scene.words
        # the same draws without the camera give another photo whenever the camera did anything
        raw = world.photo_or_texture(np.random.default_rng([37, index]), "train", (128, 128), options)
        photo_changed += not np.array_equal(np.clip(np.rint(raw), 0, 255).astype(np.uint8),
                                            world.camera_photo(np.random.default_rng([37, index]), "train",
                                                               (128, 128), options).astype(np.uint8))
    assert photo_changed >= 3


def test_v2_fonts_are_discovered_from_the_optional_extra(tmp_path: Path, monkeypatch):
    """A package of the synth-fonts extra is found by its files (here a stand-in holding a copy of DejaVu)."""
    import shutil

    real_dir = fonts._package_font_dir
    shutil.copy(Path(real_dir("matplotlib")) / "DejaVuSans.ttf", tmp_path / "Caveat[wght].ttf")
    monkeypatch.setattr(fonts, "_package_font_dir",
                        lambda package: tmp_path if package == "fontpkg_caveat" else real_dir(package))
    fonts.fonts_for_split.cache_clear()
    fonts.fonts_for_script.cache_clear()
    try:
        v2_train = fonts.fonts_for_split("train", True)
        assert "Caveat" in {f.family for f in v2_train}
        assert "Caveat" not in {f.family for f in fonts.fonts_for_split("train")}  # v1 never changes
        assert "Caveat" not in {f.family for f in fonts.fonts_for_split("test", True)}
    finally:
        fonts.fonts_for_split.cache_clear()
        fonts.fonts_for_script.cache_clear()


def test_v2_tampering_copy_move_and_splice_are_labelled_exactly():
    """v2 edits change the photo only inside tampered boxes (grown by 2 px for anti-aliasing); pasted
    words get their own label-2 boxes that overlap no other box."""
    import cv2

    from upocr.data.synth.tampering import jpeg_roundtrip
    from upocr.data.synth.world import SceneOptions

    options = SceneOptions(scenes="v2", kinds=("sign", "poster", "classic"))
    added = edited = 0
    for index in range(6):
        rng = np.random.default_rng([31, index])
        scene = render_scene(rng, size=(160, 160), split="train", options=options)
        result = tamper_scene(rng, scene, tamper_probability=1.0, methods="v2", options=options)
        assert len(result.boxes) == len(result.labels) >= len(scene.words)
        assert set(result.labels[len(scene.words):]) <= {2}
        if 2 not in result.labels:  # a pasted word may find no free place: the image is unchanged
            assert np.array_equal(result.image, result.original)
            continue
        edited += 1
        photo = result.original
        assert np.array_equal(photo, scene.image) or np.array_equal(photo, jpeg_roundtrip(scene.image, scene.degradation.jpeg_quality))
        tampered = np.zeros((160, 160), np.uint8)
        for (x1, y1, x2, y2), label in zip(result.boxes, result.labels):
            if label == 2:
                tampered[y1:y2 + 1, x1:x2 + 1] = 1
        near = cv2.dilate(tampered, np.ones((5, 5), np.uint8)).astype(bool)
        assert np.array_equal(result.image[~near], photo[~near])
        assert not np.array_equal(result.image[near], photo[near])
        for j, (x1, y1, x2, y2) in enumerate(result.boxes[len(scene.words):], start=len(scene.words)):
            added += 1
            for k, (a1, b1, a2, b2) in enumerate(result.boxes):
                assert k == j or x2 < a1 or a2 < x1 or y2 < b1 or b2 < y1  # no overlap
    assert added >= 2 and edited >= 4  # copy-move / splice happened


def test_v2_histories_vary_so_crisp_single_saved_text_is_not_a_tampering_cue():
    """v2 tampering files do not all share v1's history (scene blur + two JPEG saves for real text):
    some originals are lossless, some images stay untampered, and `reprocess` changes whole files
    (same size, real and tampered text alike) in several ways."""
    from upocr.data.synth.tampering import reprocess
    from upocr.data.synth.world import SceneOptions

    options = SceneOptions(scenes="v2", kinds=("classic", "sign"))
    lossless = untampered = 0
    for index in range(16):
        rng = np.random.default_rng([57, index])
        scene = render_scene(rng, size=(96, 96), split="train", options=options)
        result = tamper_scene(rng, scene, methods="v2", options=options)
        lossless += np.array_equal(result.original, scene.image)
        untampered += 2 not in result.labels
    assert 0 < lossless < 16 and 0 < untampered < 16

    image = render_scene(np.random.default_rng(5), size=(96, 96), split="train").image
    outputs = [reprocess(np.random.default_rng(k), image) for k in range(40)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outputs)
    changed = [not np.array_equal(o, image) for o in outputs]
    assert 0 < sum(changed) < 40  # some files are left as they are
    assert len({o.tobytes() for o in outputs}) > 10  # many different histories


def test_a_fifth_of_v2_tampering_files_are_lossless_and_read_like_the_rest(tmp_path: Path):
    """Real forgeries are judged in PNG screenshots and exported posters too, where no JPEG touched any
    word: some v2 tampering files are written losslessly (PNG, its pixels exactly the sample's), the
    others and every v1 file as JPEG, and the layout reader pairs each with its boxes."""
    from upocr.data.synth.generate import sample_maker

    generate_dataset(tmp_path / "v2", count=12, seed=3, split="train", size=64, tasks=("tampering",), scenes="v2",
                     workers=1, progress=False)
    generate_dataset(tmp_path / "v1", count=6, seed=3, split="train", size=64, tasks=("tampering",), workers=1,
                     progress=False)
    suffixes = {name: [s.image.suffix for s in layouts.tampering_samples(tmp_path / name, "train")]
                for name in ("v2", "v1")}
    assert len(suffixes["v2"]) == 12 and 0 < suffixes["v2"].count(".png") < 12
    assert set(suffixes["v1"]) == {".jpg"}
    _, write = sample_maker("tampering")
    sample = layouts.TamperingPixels(np.arange(48 * 3, dtype=np.uint8).reshape(4, 12, 3), None, [(0, 0, 3, 2, 1)])
    write(tmp_path / "one", "train", "lossless", sample)
    [read] = layouts.tampering_samples(tmp_path / "one", "train")
    assert read.image.suffix == ".png" and np.array_equal(np.asarray(Image.open(read.image)), sample.image)
    assert layouts.read_tampering_boxes(read.gt) == [(0, 0, 3, 2, 1)]


def test_synthetic_forgeries_carry_a_record_of_what_was_done(tmp_path: Path):
    """`upocr synth` writes beside each tampering sample's boxes what was done: per box None (a real word) or the
    edit (v1: retypes; v2 also copy-moves and splices, added after the scene's words), and the file's history,
    which agrees with the file written; recording draws nothing, so `reprocess` makes the same file with or without
    a list for its steps, and lists a step exactly when it changed the file."""
    from upocr.data.synth.tampering import reprocess

    generate_dataset(tmp_path / "v2", count=12, seed=8, split="train", size=96, tasks=("tampering",), scenes="v2",
                     workers=1, progress=False)
    generate_dataset(tmp_path / "v1", count=4, seed=8, split="train", size=96, tasks=("tampering",), workers=1,
                     progress=False)
    kinds = {"v1": set(), "v2": set()}
    for name in kinds:
        for sample in layouts.tampering_samples(tmp_path / name, "train"):
            boxes = layouts.read_tampering_boxes(sample.gt)
            record = layouts.read_tampering_edits(sample.edits, len(boxes))
            assert [word is None for word in record["words"]] == [label == 1 for *_, label in boxes]
            kinds[name] |= {word["kind"] for word in record["words"] if word}
            assert (record["saved"] == "lossless") == (sample.image.suffix == ".png")
            assert name == "v2" or (record["after_edits"] == [] and record["photo"].startswith("jpeg"))
    assert kinds["v1"] == {"retype"} and {"retype", "copy-move"} <= kinds["v2"] <= {"retype", "copy-move", "splice"}

    image = render_scene(np.random.default_rng(5), size=(96, 96), split="train").image
    for k in range(20):
        steps: list[str] = []
        recorded = reprocess(np.random.default_rng(k), image, steps)
        assert np.array_equal(recorded, reprocess(np.random.default_rng(k), image))
        assert bool(steps) == (not np.array_equal(recorded, image))

    sample = layouts.tampering_samples(tmp_path / "v1", "train")[0]
    with pytest.raises(layouts.LayoutError, match=rf"{sample.edits.name}: expected a record with one 'words' entry"):
        layouts.read_tampering_edits(sample.edits, 99)
    sample.edits.write_text("{not json", encoding="utf-8")
    with pytest.raises(layouts.LayoutError, match=rf"{sample.edits.name}: not a JSON record"):
        layouts.read_tampering_edits(sample.edits, 1)


def assert_forward_inverts_maps(warp, points: np.ndarray, hw: tuple[int, int]) -> None:
    """An ImageWarp's point map (polygons) and its remap maps (pixels) agree, up to rounding to a pixel."""
    moved = warp.forward(points)
    map_x, map_y = warp.maps()
    xi, yi = np.round(moved[:, 0]).astype(int), np.round(moved[:, 1]).astype(int)
    ok = (xi >= 0) & (xi < hw[1]) & (yi >= 0) & (yi < hw[0])
    back = np.stack([map_x[yi[ok], xi[ok]], map_y[yi[ok], xi[ok]]], 1)
    assert ok.sum() > 20 and np.abs(back - points[ok]).max() < 1.5


def test_page_curl_bends_text_and_labels_together(monkeypatch):
    """A curled page: forward map inverts the remap, ground truth stays exact, tampering follows the bend."""
    from upocr.data.synth import world

    curl = world.random_curl(np.random.default_rng(0), (120, 150))
    points = np.stack([np.random.default_rng(1).uniform(10, 140, 50), np.random.default_rng(2).uniform(10, 110, 50)], 1)
    assert_forward_inverts_maps(curl, points, (120, 150))

    document = world.SCENE_KINDS["document"]
    curled = tuple(replace(kind, curl_probability=1.0) for kind in document.sub_kinds)
    monkeypatch.setitem(world.SCENE_KINDS, "document", replace(document, sub_kinds=curled))
    options = world.SceneOptions(scenes="v2", kinds=("document",))
    tampered = 0
    for index in range(3):
        rng = np.random.default_rng([41, index])
        scene = render_scene(rng, size=(160, 160), split="train", options=options)
        assert scene.words and all(b.geometry.page is not None for b in scene.blocks)
        inside = fill_polygons([w.polygon for w in scene.words], (160, 160)).astype(bool)
        assert np.array_equal(scene.image[~inside], scene.background[~inside])
        result = tamper_scene(rng, scene, tamper_probability=1.0, methods="v2", options=options)
        assert result.image.shape == scene.image.shape
        tampered += 2 in result.labels  # pasted words may find no free place on a full page
    assert tampered >= 2


def test_arc_text_bends_glyphs_labels_and_polygons_together(monkeypatch):
    """Text on a circle (badges, round signs): forward map inverts the remap, ground truth stays exact,
    the polygons really bend, tampering follows the arc."""
    from upocr.data.synth import world
    from upocr.data.synth.geometry import ArcBend

    for sign in (1, -1):
        arc = ArcBend((120, 150), cx=75.0, cy=60.0, radius=40.0, sign=sign)
        rng = np.random.default_rng(3)
        points = np.stack([rng.uniform(40, 110, 50), rng.uniform(50, 70, 50)], 1)
        assert_forward_inverts_maps(arc, points, (120, 150))
        # the centre line's ends bend towards the circle's centre: down for an arch, up for a smile
        ends = arc.forward(np.float64([[40, 60], [75, 60], [110, 60]]))
        assert sign * (ends[1, 1] - ends[0, 1]) < -5 and abs(ends[0, 1] - ends[2, 1]) < 1e-6

    monkeypatch.setattr(world, "ARC_PROBABILITY", 1.0)
    tampered = 0
    for kind in ("sign", "poster"):
        options = world.SceneOptions(scenes="v2", kinds=(kind,))
        for index in range(3):
            rng = np.random.default_rng([43, index])
            scene = render_scene(rng, size=(192, 192), split="train", options=options)
            arcs = [b for b in scene.blocks if isinstance(b.geometry.page, ArcBend)]
            assert scene.words and arcs
            inside = fill_polygons([w.polygon for w in scene.words], (192, 192)).astype(bool)
            assert np.array_equal(scene.image[~inside], scene.background[~inside])
            label = textseg_label(scene)
            assert (label[~inside] == 0).all() and (label > 0).any()
            result = tamper_scene(rng, scene, tamper_probability=1.0, methods="v2", options=options)
            assert result.image.shape == scene.image.shape
            tampered += 2 in result.labels
    assert tampered >= 3
    # a bent word's polygon is no straight quad: its top edge is far from the line through its ends
    deviations = []
    for polygon in (w.polygon for w in scene.words):
        top = polygon[: len(polygon) // 2]
        (x0, y0), (x1, y1) = top[0], top[-1]
        normal = np.array([y0 - y1, x1 - x0]) / max(1e-9, np.hypot(x1 - x0, y1 - y0))
        deviations.append(np.abs((top - top[0]) @ normal).max())
    assert max(deviations) > 2.0


# --------------------------------------------------------------------------------------------
# Scene kinds as a table, one block placement path
# --------------------------------------------------------------------------------------------


def _kind_cases() -> list:
    from upocr.data.synth import world

    cases = [pytest.param(kind, id=kind.name) for kind in world.drawn_kinds()]
    cases += [pytest.param(replace(kind, curl_probability=1.0), id=f"{kind.name}-curled")
              for kind in world.drawn_kinds() if kind.curl_probability]
    return cases + [pytest.param(None, id="v1")]


@pytest.mark.parametrize("kind", _kind_cases())
def test_every_scene_kind_renders_at_64px_with_exact_ground_truth(kind):
    """Every kind (sub-kinds too, curled pages, and the v1 scene) at 64 x 64: before JPEG the text-free
    twin equals the image outside the word polygons, every labelled pixel lies inside them, and text is
    drawn (a receipt or a sign may find no room on some seeds, not on all)."""
    from upocr.data.synth import world
    from upocr.data.synth.classic import render_classic_scene

    options = world.SceneOptions(scenes="v2")
    texts = 0
    for index in range(6):
        rng = np.random.default_rng([64, index])
        if kind is None:
            scene = render_classic_scene(rng, size=(64, 64), split="test")
        else:
            scene = world.render_kind_scene(rng, kind, size=(64, 64), split="train", options=options)
            assert scene.extra["kind"] == kind.name
            if kind.curl_probability == 1.0:
                assert all(block.geometry.page is not None for block in scene.blocks)
        assert scene.image.shape == scene.background.shape == (64, 64, 3)
        inside = fill_polygons([w.polygon for w in scene.words], (64, 64)).astype(bool)
        assert np.array_equal(scene.image[~inside], scene.background[~inside])
        label = textseg_label(scene)
        assert (label[~inside] == 0).all()
        if scene.words:
            assert not np.array_equal(scene.image[inside], scene.background[inside])
            texts += bool((label == layouts.TEXTSEG_TEXT).any())
    assert texts >= 2


def test_kinds_draw_only_the_named_v2_scene_kinds_and_are_recorded(tmp_path: Path, monkeypatch, capsys):
    from upocr.data.synth import world

    drawn = []
    render_kind_scene = world.render_kind_scene

    def spy(rng, kind, **kwargs):
        drawn.append(kind.name)
        return render_kind_scene(rng, kind, **kwargs)

    monkeypatch.setattr(world, "render_kind_scene", spy)
    generate_dataset(tmp_path, count=4, seed=6, size=64, tasks=["segmentation"], workers=1, progress=False,
                     scenes="v2", kinds=["ui", "document", "ui"])
    assert len(drawn) == 4 and set(drawn) <= {"ui", "book", "receipt"}
    run, = json.loads((tmp_path / "synth-manifest.json").read_text())["runs"]
    assert run["kinds"] == ["ui", "document"]
    with pytest.raises(SynthError, match="add --scenes v2"):
        generate_dataset(tmp_path / "v1", count=1, seed=6, size=64, tasks=["segmentation"], workers=1,
                         progress=False, kinds=["ui"])
    assert cli_main(["synth", "--out", str(tmp_path / "bad"), "--count", "1", "--scenes", "v2", "--kinds", "sgn",
                     "--tasks", "segmentation", "--workers", "1"]) == 2
    assert "scene kinds sgn: expected some of classic, sign, poster, ui, document" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() and not (tmp_path / "v1").exists()


def test_kinds_help_names_every_scene_kind(capsys):
    """The help lists the kinds by hand (the command does not import the generator to register): keep it whole."""
    from upocr.data.synth import world

    with pytest.raises(SystemExit):
        cli_main(["synth", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    listed = help_text.split("draw only these scene kinds (")[1].split(";")[0]
    assert listed.split(", ") == list(world.SCENE_KINDS)


def test_scene_kinds_table_weights_and_lookup():
    from upocr.data.synth import world

    assert list(world.SCENE_KINDS) == list(world.SceneOptions().kinds) == ["classic", "sign", "poster", "ui", "document"]
    assert sum(kind.weight for kind in world.SCENE_KINDS.values()) == pytest.approx(1.0)
    document = world.SCENE_KINDS["document"]
    assert [k.name for k in document.sub_kinds] == ["book", "receipt"]
    assert sum(k.weight for k in document.sub_kinds) == pytest.approx(1.0)
    drawn = [document.resolve(np.random.default_rng(i)).name for i in range(400)]
    assert 0.5 < drawn.count("book") / len(drawn) < 0.7
    poster = world.SCENE_KINDS["poster"]
    assert [k.name for k in poster.sub_kinds] == ["poster", "designed-poster"]
    assert sum(k.weight for k in poster.sub_kinds) == pytest.approx(1.0)
    drawn = [poster.resolve(np.random.default_rng(i)).name for i in range(400)]
    assert 0.4 < drawn.count("designed-poster") / len(drawn) < 0.6
    assert [k.name for k in world.drawn_kinds()] == ["classic", "sign", "poster", "designed-poster", "ui", "book",
                                                     "receipt"]
    with pytest.raises(ValueError, match="unknown scene kind 'comic'"):
        render_scene(np.random.default_rng(0), size=(64, 64), options=world.SceneOptions(scenes="v2", kinds=("comic",)))
    with pytest.raises(ValueError, match="either background, plans and camera, or sub-kinds"):
        world.SceneKind("half", 1.0, background=world.photo_or_texture)


def test_a_block_too_big_for_the_image_raises_and_is_retried_smaller():
    from upocr.data.synth.blocks import BlockPlan, BlockTooBig, SceneCanvas, place_block, place_with_retries

    font = fonts.fonts_for_split("train")[0]
    plan = BlockPlan(font=font, script="english", size=150, lines=1, words_per_line=2, max_width=1000.0, angle=0.0,
                     perspective=0.0)
    canvas = SceneCanvas(np.full((64, 64, 3), 200, np.float32))
    with pytest.raises(BlockTooBig):
        place_block(np.random.default_rng(0), plan, canvas, "train", blur_reach=0.0)
    assert not canvas.occupied.any() and not canvas.blocks
    placed = place_with_retries(np.random.default_rng(0), plan, canvas, "train", blur_reach=0.0, tries=10)
    assert placed is not None and MIN_FONT_PX <= placed.block.style.size < 150 and canvas.occupied.any()
    # Pages and receipts keep their print size and lose lines instead.
    page = replace(plan, size=10, lines=20)
    assert page.smaller(1.0) == (replace(page, lines=14), 1.0) and plan.smaller(1.0) == (plan, 0.7)


def test_a_line_set_apart_is_drawn_labelled_and_retyped_in_its_own_face():
    """A receipt's heading (larger, bold) and bold total: genuine emphasis, so "bolder or larger than the
    other words" is not a tampering label by itself."""
    from upocr.data.synth.blocks import BlockPlan, LineFace, SceneCanvas, place_block
    from upocr.data.synth.render import Degradation
    from upocr.data.synth.tampering import _retype

    body = next(f for f in fonts.fonts_for_split("train") if f.family == "DejaVu Sans Mono" and "Bold" not in f.path)
    bold = fonts.bold_fonts(body)
    assert [Path(f.path).name for f in bold] == ["DejaVuSansMono-Bold.ttf"]
    plan = BlockPlan(font=body, script="english", size=12, lines=5, words_per_line=2, max_width=300.0, angle=0.0,
                     perspective=0.0, line_faces=(LineFace(0, bold[0], 2.0), LineFace(-1, bold[0])))
    assert plan.line_typefaces(body, 12, 5) == [(bold[0], 24)] + [(body, 12)] * 3 + [(bold[0], 12)]
    assert plan.smaller(1.0) == (replace(plan, line_faces=()), 1.0)  # too big: the heading goes first
    canvas = SceneCanvas(np.full((256, 320, 3), 230, np.float32))
    placed = place_block(np.random.default_rng(3), plan, canvas, "train", blur_reach=0.0)
    assert placed is not None
    canvas.draw(placed)
    lines = sorted({w.origin[1] for w in placed.words})
    first = [w for w in placed.words if w.origin[1] == lines[0]]
    middle = [w for w in placed.words if w.origin[1] in lines[1:-1]]
    last = [w for w in placed.words if w.origin[1] == lines[-1]]
    assert all(w.typeface == (bold[0], 24) for w in first) and all(w.typeface == (bold[0], 12) for w in last)
    assert all(w.typeface is None for w in middle)  # the block's own style
    height = lambda w: w.box[3] - w.box[1]  # noqa: E731
    assert min(map(height, first)) > 1.5 * np.median([height(w) for w in middle])
    # The heading's line leaves room for its taller glyphs: its box ends above the next line's.
    assert max(w.box[3] for w in first) < min(w.box[1] for w in middle)
    scene = canvas.scene(Degradation(illumination=None, blur_sigma=0.0, motion_kernel=None, noise=None, jpeg_quality=95),
                         "train")
    # The heading is drawn at its size: its ink fills most of its (tight) box, not a body-size corner.
    ink = scene.fill > 0.5
    for w in first:
        x1, y1, x2, y2 = w.box
        assert ink[y1:y2 + 1, x1:x2 + 1].any(axis=1).mean() > 0.5
    # A forger retyping a heading word imitates the heading's face, not the body's.
    index = placed.words.index(first[0])
    boxes = [w.box for w in scene.words]
    photo = np.clip(scene.image, 0, 255).astype(np.uint8)
    retyped = _retype(np.random.default_rng(0), scene, photo, {index}, boxes, [None] * len(boxes))
    x1, y1, x2, y2 = boxes[index]
    span = lambda rows: np.ptp(np.nonzero(rows)[0]) if rows.any() else 0  # noqa: E731
    old_ink, new_ink = photo.mean(-1) < 150, retyped.mean(-1) < 150  # dark print on light paper
    old_span = span(old_ink[y1:y2 + 1, x1:x2 + 1].any(1))  # 24 px glyphs; the body's 12 px ones span < 11
    assert old_span >= 15 and span(new_ink[y1:y2 + 1, x1:x2 + 1].any(1)) > 0.7 * old_span
