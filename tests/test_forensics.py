"""upocr.forensics: per-word tampering features, the npz tree classifier and the class map."""

from __future__ import annotations

import zipfile

import cv2
import numpy as np
import pytest

from upocr.forensics.context import CONTEXT_NAMES, context_features, line_groups
from upocr.forensics.detect import (WORD_GROWTH_ACROSS, WORD_GROWTH_ALONG, classify_regions, regions_from_text_mask,
                                    score_words)
from upocr.forensics.features import (FEATURE_NAMES, FEATURES_VERSION, _lab, _mean_colour, image_maps, percentiles,
                                      word_features)
from upocr.forensics.model import ClassifierError, TreeEnsemble, from_sklearn, load_classifier
from upocr.utils import cpu_has_native_bf16

sklearn_ensemble = pytest.importorskip("sklearn.ensemble")


def page(rng: np.random.Generator, words: int = 6) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A noisy grey page with `words` black words in two lines, saved once as JPEG (quality 80)."""
    image = np.clip(rng.normal(200, 4, (120, 360, 3)), 0, 255).astype(np.uint8)
    boxes = []
    for i in range(words):
        x, y = 10 + (i % 3) * 115, 45 + (i // 3) * 50
        cv2.putText(image, "word%d" % i, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (20, 20, 20), 2, cv2.LINE_AA)
        boxes.append((x - 2, y - 24, x + 100, y + 6))
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return cv2.imdecode(data, cv2.IMREAD_COLOR), boxes


def test_exported_trees_predict_what_sklearn_predicts(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(600, len(FEATURE_NAMES)))
    features[rng.random(features.shape) < 0.1] = np.nan  # missing values take the learned side
    labels = ((np.nan_to_num(features[:, 0]) + 0.5 * np.nan_to_num(features[:, 3]) > 0.3)).astype(int)
    model = sklearn_ensemble.HistGradientBoostingClassifier(max_iter=25, random_state=0).fit(features, labels)
    ensemble = from_sklearn(model, FEATURE_NAMES, 0.7, {"note": "test"})
    expected = model.predict_proba(features)[:, 1]
    np.testing.assert_allclose(ensemble.probability(features), expected, rtol=0, atol=1e-9)
    path = ensemble.save(tmp_path / "c.npz")
    loaded = load_classifier(path)
    np.testing.assert_allclose(loaded.probability(features), expected, rtol=0, atol=1e-9)
    assert loaded.threshold_probability == 0.7 and loaded.record["note"] == "test"
    with zipfile.ZipFile(path) as archive:  # plain arrays only: readable without pickle
        for name in archive.namelist():
            np.load(archive.open(name), allow_pickle=False)


def test_the_second_look_reads_the_features_and_their_context_and_survives_saving(tmp_path):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(400, len(FEATURE_NAMES)))
    labels = (features[:, 0] > 0.5).astype(int)
    first = sklearn_ensemble.HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(features, labels)
    both = np.hstack([features, rng.normal(size=(400, len(CONTEXT_NAMES)))])
    second = sklearn_ensemble.HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(both, labels)
    ensemble = from_sklearn(first, FEATURE_NAMES, 0.6, {"note": "two looks"})
    ensemble.context = from_sklearn(second, FEATURE_NAMES + CONTEXT_NAMES, 0.6, {})
    loaded = load_classifier(ensemble.save(tmp_path / "two.npz"))
    np.testing.assert_allclose(loaded.probability(features), first.predict_proba(features)[:, 1], atol=1e-9)
    np.testing.assert_allclose(loaded.context.probability(both), second.predict_proba(both)[:, 1], atol=1e-9)
    assert loaded.context.feature_names == FEATURE_NAMES + CONTEXT_NAMES and loaded.threshold_probability == 0.6
    assert load_classifier(ensemble.__class__(**{**ensemble.__dict__, "context": None}).save(tmp_path / "one.npz")).context is None
    # On a page, the word's probability is the second look's, given the first look's context.
    image, boxes = page(np.random.default_rng(2))
    words = word_features(image, boxes)
    context = context_features(loaded.probability(words), np.array(boxes, float))
    expected = loaded.context.probability(np.hstack([words, context]))
    np.testing.assert_allclose(score_words(image, boxes, loaded), expected, atol=1e-9)


def test_context_compares_each_word_with_the_others_of_its_image_and_line():
    # two words on one line, a third far to the right on that row, a fourth on the next line
    boxes = np.array([[10, 10, 50, 30], [60, 12, 100, 31], [400, 10, 440, 30], [10, 60, 50, 80]], float)
    assert list(line_groups(boxes)) == [0, 0, 1, 2]
    p = np.array([0.9, 0.2, 0.4, 0.1])
    context = dict(zip(CONTEXT_NAMES, context_features(p, boxes).T))
    np.testing.assert_allclose(context["others_max"], [0.4, 0.9, 0.9, 0.9])
    np.testing.assert_allclose(context["others_mean"], [0.7 / 3, 1.4 / 3, 1.2 / 3, 1.5 / 3], atol=1e-6)
    np.testing.assert_allclose(context["others_over_half"], [0, 1 / 3, 1 / 3, 1 / 3], atol=1e-6)
    np.testing.assert_allclose(context["rank"], [1, 1 / 3, 2 / 3, 0], atol=1e-6)
    np.testing.assert_array_equal(context["line_words"], [2, 2, 1, 1])
    np.testing.assert_allclose(context["line_others_max"], [0.2, 0.9, np.nan, np.nan])
    np.testing.assert_allclose(context["beside_max"], [0.2, 0.9, np.nan, np.nan])
    assert np.all(context["image_words"] == 4) and context_features(np.zeros(0), np.zeros((0, 4))).shape == (0, len(CONTEXT_NAMES))
    alone = context_features(np.array([0.5]), boxes[:1])
    assert np.isnan(alone[0, 1]) and alone[0, 4] == 0


def test_unusable_classifier_files_are_refused_in_one_line(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ClassifierError, match="junk.npz: not a readable tampering classifier"):
        load_classifier(tmp_path / "junk.npz")
    with pytest.raises(ClassifierError, match="no such file"):
        load_classifier(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", format=np.array("something else"))
    with pytest.raises(ClassifierError, match="not a upocr-tampering-trees-1 file"):
        load_classifier(tmp_path / "other.npz")


def test_features_single_out_the_word_with_another_history():
    rng = np.random.default_rng(1)
    image, boxes = page(rng)
    # Forge word 4: smooth its region (a blurred, noise-free retype) as an editor would leave it.
    x1, y1, x2, y2 = boxes[4]
    forged = image.copy()
    forged[y1:y2 + 1, x1:x2 + 1] = cv2.GaussianBlur(image[y1:y2 + 1, x1:x2 + 1], (0, 0), 1.2)
    features = word_features(forged[..., ::-1].copy(), boxes)
    assert features.shape == (len(boxes), len(FEATURE_NAMES))
    noise_z = features[:, FEATURE_NAMES.index("noise_bg_z")]
    sharp_dev = features[:, FEATURE_NAMES.index("sharpness_dev")]
    assert np.argmin(noise_z) == 4 and noise_z[4] < -2  # smoother background than every other word
    assert np.argmin(sharp_dev) == 4
    twin = features[:, FEATURE_NAMES.index("twin")]
    assert np.all(twin < 0.99)  # no copy-move here


def test_the_same_photo_gives_the_same_features_wherever_it_lies_in_memory():
    # cv2.magnitude's last bit depends on its buffers' memory alignment (on a real photo, 612 pixels changed between
    # two calls), and the gradient's percentiles make the edge and ring masks: the gradient is numpy's float32 hypot.
    rng = np.random.default_rng(5)
    image, boxes = page(rng, words=6)
    image = np.ascontiguousarray(image[..., ::-1])
    grey = cv2.cvtColor(np.ascontiguousarray(image[..., ::-1]), cv2.COLOR_BGR2GRAY).astype(np.float32)
    gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    assert np.array_equal(image_maps(image).gradient, np.sqrt(gx * gx + gy * gy))
    reference = word_features(image, boxes)
    for offset in (1, 3, 8):
        moved = np.empty(image.size + 16, np.uint8)[offset:offset + image.size].reshape(image.shape)
        moved[:] = image
        assert np.array_equal(word_features(moved, boxes), reference, equal_nan=True)


def test_percentiles_mean_colours_and_lab_are_numpys_and_opencvs_to_the_last_bit():
    rng = np.random.default_rng(6)
    for size in (1, 2, 3, 5, 10, 99, 1000, 4001):
        values = (rng.random(size) * 300).astype(np.float32)
        values[: size // 3] = np.round(values[: size // 3])  # ties
        got = percentiles(values, 80, 50)
        want = [np.percentile(values, 80), np.percentile(values, 50)]
        assert [type(v) for v in got] == [type(v) for v in want] and got == want
    colours = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for where in (rng.random((37, 53)) < share for share in (0.003, 0.3, 0.9)):
        assert np.array_equal(_mean_colour(colours, where), colours[where].mean(0))
    assert np.isnan(_mean_colour(colours, np.zeros((37, 53), bool))).all()
    means = np.vstack([rng.random((50, 3)) * 255, np.full((1, 3), np.nan)])
    one_by_one = [cv2.cvtColor((m.astype(np.float32) / 255.0).reshape(1, 1, 3), cv2.COLOR_BGR2Lab).reshape(3)
                  for m in means[:-1]]
    lab = _lab(means)
    assert np.array_equal(lab[:-1], np.stack(one_by_one)) and np.isnan(lab[-1]).all()


def test_a_copied_word_has_a_twin_and_tiny_regions_are_missing_not_errors():
    rng = np.random.default_rng(2)
    image, boxes = page(rng)
    x1, y1, x2, y2 = boxes[0]
    image[y1:y2 + 1, x1 + 230:x2 + 231] = image[y1:y2 + 1, x1:x2 + 1]  # copy word 0 over word 2
    boxes[2] = (x1 + 230, y1, x2 + 230, y2)
    features = word_features(image[..., ::-1].copy(), [*boxes, (5, 5, 6, 6)])
    twin = features[:, FEATURE_NAMES.index("twin")]
    assert twin[0] > 0.99 and twin[2] > 0.99 and twin[1] < 0.99
    assert np.isnan(features[-1, FEATURE_NAMES.index("noise_bg")])


def test_seams_find_a_refilled_patch_border_outside_the_found_box():
    rng = np.random.default_rng(3)
    image, boxes = page(rng)
    # Word 4's patch, 6 px wider than its box on every side, refilled 8 grey levels brighter (a regenerated
    # background that does not quite match); the box given is the word as a finder would find it.
    x1, y1, x2, y2 = boxes[4]
    patch = image[y1 - 6:y2 + 7, x1 - 6:x2 + 7].astype(np.int16)
    image[y1 - 6:y2 + 7, x1 - 6:x2 + 7] = np.clip(patch + 8, 0, 255).astype(np.uint8)
    features = word_features(image[..., ::-1].copy(), [*boxes, (5, 5, 6, 6), (0, 0, 30, 20)])
    weakest_side = features[:, FEATURE_NAMES.index("seam_intensity_min_dev")]
    assert np.nanargmax(weakest_side) == 4  # every side of the patch steps; no other word has four
    assert features[4, FEATURE_NAMES.index("seam_intensity_signed")] < 0  # outside darker than inside
    height = y2 - y1 + 1
    offset = features[4, FEATURE_NAMES.index("seam_intensity_offset")] * height
    assert 4 <= offset <= 9  # found near the 6-pixel margin, not at the box
    assert np.isnan(features[len(boxes), FEATURE_NAMES.index("seam_ela_max")])  # too small to search
    assert np.isfinite(features[len(boxes) + 1, FEATURE_NAMES.index("seam_ela_max")])  # at the border: the sides that fit


def test_seams_take_the_strongest_step_and_of_equal_steps_the_one_nearest_the_box():
    from upocr.forensics.seams import BASE_SEAM_NAMES, measure_seams, seam_planes

    grey = np.full((200, 300), 120, np.float32)
    grey[:, :100] += 2  # a faint step along column 100, 10 px left of the first box (too faint to be a glyph edge)
    planes, calm = seam_planes(grey, np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2),
                               {quality: np.zeros_like(grey) for quality in (85, 70, 95)})
    measured = measure_seams(planes, calm, [(110, 20, 200, 119), (150, 150, 250, 179)])  # 100 rows: more than ROWS

    def column(name: str) -> np.ndarray:
        return measured[:, BASE_SEAM_NAMES.index(name)]

    np.testing.assert_allclose(column("seam_intensity_max"), [4.0, 0.0])  # 2 levels in units of the noise (0.5)
    np.testing.assert_allclose(column("seam_intensity_signed"), [1.0, 0.0])  # outside brighter, on one side of four
    # The left side's seam lies 10 px out (0.1 heights); every other side is flat, all its steps equal, and the
    # seam taken is the one at the box (offset 0), not the first searched.
    np.testing.assert_allclose(column("seam_intensity_offset"), [0.1 / 4, 0.0])
    np.testing.assert_allclose(column("seam_ela_offset"), [0.0, 0.0])


def stump(feature: str, split: float) -> TreeEnsemble:
    """One tree: log-odds -2 when feature <= split, +2 above (and for missing values: -2)."""
    return TreeEnsemble(
        feature=np.array([FEATURE_NAMES.index(feature), -1, -1], np.int32), threshold=np.array([split, 0, 0], float),
        missing_left=np.array([True, False, False]), left=np.array([1, 0, 0], np.int32),
        right=np.array([2, 0, 0], np.int32), leaf=np.array([False, True, True]), value=np.array([0, -2.0, 2.0]),
        roots=np.array([0], np.int32), baseline=0.0, feature_names=FEATURE_NAMES, threshold_probability=0.5,
        record={"max_depth_reached": 1})


def test_class_map_paints_each_region_by_its_probability():
    rng = np.random.default_rng(3)
    image, boxes = page(rng)
    classifier = stump("log_height", np.log(29.5))  # boxes are 31 px high: one taller region is "tampered"
    boxes[5] = (boxes[5][0], boxes[5][1] - 4, boxes[5][2], boxes[5][3])
    result = classify_regions(image[..., ::-1].copy(), boxes, classifier=classifier)
    np.testing.assert_allclose(result.probabilities, 1 / (1 + np.exp(-2)))
    assert set(np.unique(result.classes)) == {0, 2}
    stricter = classify_regions(image[..., ::-1].copy(), boxes, classifier=stump("log_height", 3.45))
    x1, y1, x2, y2 = boxes[5]
    assert stricter.classes[y1 + 2, x1 + 2] == 2 and stricter.classes[boxes[0][1] + 2, boxes[0][0] + 2] == 1
    assert stricter.classes[0, 0] == 0
    words = stricter.words()
    assert [w["tampered"] for w in words] == [False] * 5 + [True] and words[5]["box"] == list(boxes[5])
    assert len(score_words(image, [], classifier)) == 0
    extents = [(x1 - 3, y1 - 2, x2 + 3, y2 + 2) for x1, y1, x2, y2 in boxes]  # painted, not measured
    grown = classify_regions(image[..., ::-1].copy(), boxes, classifier=stump("log_height", 3.45), extents=extents)
    np.testing.assert_array_equal(grown.probabilities, stricter.probabilities)
    assert grown.classes[y1 - 2, x1 - 3] == 2 and stricter.classes[y1 - 2, x1 - 3] == 0
    assert grown.words()[5]["box"] == list(extents[5])  # what was painted
    assert grown.words()[5]["scored_box"] == list(boxes[5]) and words[5]["scored_box"] == words[5]["box"]
    with pytest.raises(ValueError, match="2 extents for 6 regions"):
        classify_regions(image, boxes, classifier=classifier, extents=extents[:2])


def test_text_mask_components_are_grouped_into_words():
    mask = np.zeros((60, 200), np.uint8)
    for x in (10, 22, 34):  # three letters, 4 px apart: one word
        mask[20:36, x:x + 8] = 1
    for x in (120, 132):  # a second word, far to the right
        mask[20:36, x:x + 8] = 1
    mask[50, 5] = 1  # a speck
    boxes = regions_from_text_mask(mask)
    assert [list(b) for b in boxes] == [[10, 20, 41, 35], [120, 20, 139, 35]]
    assert regions_from_text_mask(np.zeros((10, 10), bool)) == []


def test_median_of_the_other_words_matches_the_direct_computation():
    from upocr.forensics.features import median_of_others

    rng = np.random.default_rng(4)
    for count in (1, 2, 3, 4, 7, 20):
        values = rng.normal(size=(count, 5)).astype(np.float32)
        values[rng.random(values.shape) < 0.3] = np.nan
        expected = np.full(values.shape, np.nan, np.float32)
        for i in range(count):
            others = np.delete(values, i, axis=0)
            for j in range(5):
                column = others[:, j][~np.isnan(others[:, j])]
                if column.size:
                    expected[i, j] = np.median(column)
        np.testing.assert_allclose(median_of_others(values), expected, rtol=1e-6, equal_nan=True)


def test_threshold_keeps_the_false_alarm_rate_and_auc_counts_ties_half():
    from upocr.forensics.train import roc_auc, threshold_for_false_alarms

    probabilities = np.linspace(0, 1, 201)
    labels = np.zeros(201, int)
    threshold = threshold_for_false_alarms(probabilities, labels, 0.05)
    assert (probabilities > threshold).mean() <= 0.05 and (probabilities >= threshold).mean() > 0.05
    assert roc_auc(np.array([0.1, 0.9, 0.5, 0.5]), np.array([0, 1, 0, 1])) == pytest.approx(0.875)


def test_constructed_copy_move_pastes_one_field_over_another():
    from upocr.evaluate.forensic import copy_move_forgery

    image, boxes = page(np.random.default_rng(5))
    image = image[..., ::-1].copy()
    words = [np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32) for x1, y1, x2, y2 in boxes]
    forged, polygons, tampered = copy_move_forgery(image, words, np.random.default_rng(0))
    assert tampered.count(True) == 1 and tampered[-1] and len(polygons) == len(words)
    x1, y1 = polygons[-1].min(0).astype(int)
    x2, y2 = polygons[-1].max(0).astype(int)
    pasted = forged[y1:y2 + 1, x1:x2 + 1].astype(int)
    sources = [image[b[1]:b[3] + 1, b[0]:b[2] + 1].astype(int) for b in boxes]
    # The pasted patch is one of the other fields (up to the JPEG re-save).
    assert min(np.abs(pasted - s).mean() for s in sources if s.shape == pasted.shape) < 4


def test_train_tampering_command_writes_a_classifier_with_its_record(tmp_path, capsys):
    from upocr.cli import main
    from upocr.data.synth import generate_dataset
    from upocr.data.synth.generate import GENERATOR_VERSION

    generate_dataset(tmp_path / "data", count=12, seed=3, size=128, tasks=["tampering"], workers=1, progress=False)
    out = tmp_path / "words.npz"
    assert main(["train-tampering", "--data", str(tmp_path / "data"), "--out", str(out), "--max-iter", "5",
                 "--validation-share", "0.5", "--features", str(tmp_path / "features.npz"), "--cnn-epochs", "1"]) == 0
    classifier = load_classifier(out)
    record = classifier.record
    assert record["images"] == 12 and record["synth_runs"][0]["seed"] == 3
    assert record["synth_runs"][0]["generator_version"] == GENERATOR_VERSION
    assert 0 <= record["validation"]["false_alarm_rate"] <= 0.01 and classifier.threshold_probability == record["threshold"]
    assert (tmp_path / "features.npz").is_file() and record["features_version"] == FEATURES_VERSION
    # A kept table measured by another version of the features (here: one from before versions were kept) is
    # refused, not trained on: its values may differ under the same names.
    with np.load(tmp_path / "features.npz") as data:
        np.savez(tmp_path / "older.npz", **{key: data[key] for key in data.files if key != "features_version"})
    assert main(["train-tampering", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "older-words.npz"),
                 "--features", str(tmp_path / "older.npz")]) == 2
    assert f"older.npz: features version 1, this upocr measures version {FEATURES_VERSION}" in capsys.readouterr().err
    assert not (tmp_path / "older-words.npz").exists()
    assert not record["context"] and classifier.context is None  # the first look alone, by default
    # the crop CNN, blended: the threshold is chosen on the blend, the trees' own validation is kept
    assert classifier.crop_net is not None and record["crop_net"]["epochs"] == 1
    assert record["crop_net"]["precision"] == "fp32"  # the default
    assert record["trees_validation"]["words"] == record["validation"]["words"]
    # --crops-file: the crops memory-mapped from a file instead of memory; the same network, the file removed
    crops_file = tmp_path / "crops.npy"
    assert main(["train-tampering", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "mapped.npz"), "--max-iter",
                 "5", "--validation-share", "0.5", "--features", str(tmp_path / "features.npz"), "--cnn-epochs", "1",
                 "--crops-file", str(crops_file)]) == 0
    mapped = load_classifier(tmp_path / "mapped.npz")
    assert not crops_file.exists() and mapped.threshold_probability == classifier.threshold_probability
    for name, value in classifier.crop_net.weights.items():
        np.testing.assert_allclose(mapped.crop_net.weights[name], value, atol=1e-6, err_msg=name)
    crops_file.write_bytes(b"someone's file")  # never overwritten
    assert main(["train-tampering", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "mapped.npz"),
                 "--features", str(tmp_path / "features.npz"), "--crops-file", str(crops_file)]) == 2
    assert "crops.npy: exists" in capsys.readouterr().err and crops_file.read_bytes() == b"someone's file"
    # --context: the second look too, from the kept features (no measuring again); --cnn-epochs 0: no CNN
    assert main(["train-tampering", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "two.npz"), "--max-iter",
                 "5", "--validation-share", "0.5", "--features", str(tmp_path / "features.npz"), "--context",
                 "--cnn-epochs", "0", "--max-leaf-nodes", "4", "--learning-rate", "0.2"]) == 0
    two = load_classifier(tmp_path / "two.npz")
    assert two.crop_net is None and "crop_net" not in two.record
    # the trees' size options reach the trees: 4 leaves = 7 nodes per tree, 5 rounds
    assert two.record["max_leaf_nodes"] == 4 and two.record["learning_rate"] == 0.2
    assert len(two.roots) == 5 and two.leaf.sum() <= 4 * 5 and record["max_leaf_nodes"] == 31
    assert two.context is not None and two.context.feature_names == FEATURE_NAMES + CONTEXT_NAMES
    assert two.record["words"] == record["words"] and two.record["context_folds"] == 4
    # --detector-every: the words detect-tampering finds (bundled detector, lines split) join the examples.
    assert main(["train-tampering", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "found.npz"), "--max-iter", "5",
                 "--validation-share", "0.5", "--detector-every", "2", "--cnn-epochs", "1", "--cnn-width", "4",
                 "--precision", "auto"]) == 0
    narrow = load_classifier(tmp_path / "found.npz")  # --cnn-width: a narrower crop CNN, read back at its width
    assert narrow.crop_net.weights["body.0.0.weight"].shape[0] == 4 and narrow.record["crop_net"]["width"] == 4
    assert narrow.record["crop_net"]["precision"] == ("bf16" if cpu_has_native_bf16() else "fp32")  # as resolved
    assert record["crop_net"]["width"] == 16
    found = narrow.record
    assert found["found_regions_every"] == 2 and found["words"] > record["words"]
    # The threshold is chosen on the words detect-tampering scores: the finder's, when the table has them.
    assert record["threshold_words"] == "all" and found["threshold_words"] == "found"
    assert found["validation_found_words"]["false_alarm_rate"] <= 0.01
    assert main(["train-tampering", "--data", str(tmp_path / "data"), "--out", str(out), "--false-alarm-rate", "2"]) == 2
    assert "must be between 0 and 1" in capsys.readouterr().err
    # --members 2: a committee from seeds 0 and 1 on the same features and crops; its first member is the
    # single classifier of seed 0 (the same trees and network), the threshold chosen on the committee's verdicts.
    from upocr.forensics.cnn import CropCommittee

    assert main(["train-tampering", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "committee.npz"),
                 "--max-iter", "5", "--validation-share", "0.5", "--features", str(tmp_path / "features.npz"),
                 "--cnn-epochs", "1", "--members", "2"]) == 0
    committee = load_classifier(tmp_path / "committee.npz")
    assert isinstance(committee.crop_net, CropCommittee) and len(committee.crop_net.nets) == 2
    assert committee.record["members"] == 2 and [m["seed"] for m in committee.record["committee"]] == [0, 1]
    assert len(committee.roots) == 2 * len(classifier.roots) and committee.record["iterations"] == len(committee.roots)
    for name, value in classifier.crop_net.weights.items():
        np.testing.assert_allclose(committee.crop_net.nets[0].weights[name], value, atol=1e-6, err_msg=name)
    assert committee.threshold_probability == committee.record["threshold"]
    assert main(["train-tampering", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "no.npz"),
                 "--features", str(tmp_path / "features.npz"), "--members", "2", "--context"]) == 2
    assert "a committee (members > 1) has no second look" in capsys.readouterr().err


def test_found_regions_are_labelled_by_their_share_in_tampered_boxes():
    from upocr.forensics.train import found_region_labels

    boxes = [(10, 10, 49, 29, 2), (60, 10, 99, 29, 1)]
    regions = [np.array([12, 10, 47, 29]), np.array([60, 10, 99, 29]), np.array([30, 10, 89, 29]),
               np.array([150, 50, 170, 60])]
    assert found_region_labels(regions, boxes, (100, 200)).tolist() == [1, 0, -1, 0]


def test_line_regions_are_split_into_words_at_wide_gaps():
    from upocr.forensics.detect import split_into_words

    image = np.full((40, 200, 3), 230, np.uint8)
    for x in (10, 18, 26):  # word 1: letters 3 px apart
        image[10:30, x:x + 5] = 20
    for x in (70, 78):  # word 2, 39 px further
        image[10:30, x:x + 5] = 20
    words = split_into_words(image, [np.array([5, 8, 90, 31])])
    assert [np.round(w).astype(int).tolist() for w in words] == [[5, 8, 30, 31], [70, 8, 90, 31]]
    words = split_into_words(image, [np.array([5, 8, 90, 31])], grow=True)  # the extent a label gives each word
    along, across = WORD_GROWTH_ALONG * 24, WORD_GROWTH_ACROSS * 24  # the line is 24 px high
    pieces = [[5, 8, 30, 31], [70, 8, 90, 31]]  # cut at the blank run 31-69, the line's ends kept
    grown = [[x1 - along, y1 - across, x2 + along, y2 + across] for x1, y1, x2, y2 in pieces]
    np.testing.assert_allclose(np.array(words), np.array(grown), atol=0.3)  # (the upright warp scales by 85 / 84)


def test_split_words_grow_to_the_label_convention_inside_the_image():
    from upocr.forensics.detect import split_into_words

    image = np.full((30, 60, 3), 230, np.uint8)
    image[2:28, 1:20] = 20  # one word filling the line's height, at the image's edges
    (word,) = split_into_words(image, [np.array([0, 0, 40, 29])], grow=True)
    x1, y1, x2, y2 = word.tolist()
    assert (x1, y1, y2) == (0, 0, 29)  # grown, then clipped to the image
    assert 40 + 0.9 * WORD_GROWTH_ALONG * 29 < x2 < 59  # the right end grows where the image goes on


def test_a_tilted_line_is_split_along_its_own_direction():
    from upocr.forensics.detect import split_into_words

    canvas = np.full((200, 200), 230, np.uint8)
    for x in (40, 48, 56, 110, 118, 126, 134):  # two words on one line, 49 px apart
        canvas[90:110, x:x + 5] = 20
    tilted = cv2.warpAffine(canvas, cv2.getRotationMatrix2D((100, 100), 30, 1), (200, 200), borderValue=230)
    ys, xs = np.nonzero(tilted < 128)
    line = cv2.boxPoints(cv2.minAreaRect(np.stack([xs, ys], 1).astype(np.float32)))
    first, second = split_into_words(np.stack([tilted] * 3, -1), [line])  # in the axis-aligned box: one word
    assert first[0] < second[0] and first[3] > second[3]  # reading order, and the line rises to the right
    for word, letters in ((first, (40, 61)), (second, (110, 139))):
        inside = np.zeros_like(canvas, bool)
        inside[90:110, letters[0]:letters[1]] = True
        ink = cv2.warpAffine(inside.astype(np.uint8), cv2.getRotationMatrix2D((100, 100), 30, 1), (200, 200)) > 0
        x1, y1, x2, y2 = np.round(word).astype(int)
        assert ink[y1:y2 + 1, x1:x2 + 1].sum() > 0.95 * ink.sum()  # each word's box holds that word's ink


def test_detect_tampering_by_words_paints_the_word_detector_words(tiny_weights, tmp_path):
    import json

    from upocr.cli import main
    from upocr.predict import Predictor

    image, _ = page(np.random.default_rng(6))
    image = image[..., ::-1].copy()
    predictor = Predictor(weights=tiny_weights, size=64, tile=None, tampering="words")
    found = predictor.predict(image, "tampering")
    assert found.words and set(found.words[0]) == {"box", "polygon", "scored_box", "probability", "tampered"}
    x1, y1, x2, y2 = found.words[0]["box"]
    assert found.classes[(y1 + y2) // 2, (x1 + x2) // 2] in (1, 2) and found.classes[0, 0] == 0
    everything = predictor.with_options(tampering_threshold=0.0).predict(image, "tampering")
    assert all(word["tampered"] for word in everything.words) and set(np.unique(everything.classes)) == {0, 2}
    # The same words decided again at another threshold, nothing measured again: the map a run at it paints.
    decided = found.word_tampering
    assert np.array_equal(decided.at_threshold(decided.threshold).classes, found.classes)
    assert np.array_equal(decided.at_threshold(0.0).classes, everything.classes)
    assert 2 not in decided.at_threshold(1.0).classes and decided.at_threshold(0.25).threshold == 0.25
    assert predictor.with_options(tampering="model").predict(image, "tampering").words is None
    cv2.imwrite(str(tmp_path / "page.png"), image[..., ::-1])
    assert main(["detect-tampering", str(tmp_path / "page.png"), "-o", str(tmp_path / "out"), "--weights",
                 str(tiny_weights), "--size", "64", "--tampering", "words", "--tampering-threshold", "0.5",
                 "--regions"]) == 0
    written = json.loads((tmp_path / "out" / "page_regions.json").read_text())
    assert len(written["words"]) == len(found.words)
    assert [w["tampered"] for w in written["words"]] == [w["probability"] > 0.5 for w in written["words"]]


def test_found_words_are_counted_by_height_with_the_forged_pixels_under_them():
    """WordHeights: each word in its height bin, forged / genuine by its share of forged pixels, flagged by its
    decision; the forged pixels under the painted words, a pixel in the taller word's bin where words overlap."""
    from upocr.evaluate.forensic import HEIGHT_BINS, WordHeights
    from upocr.forensics.detect import WordTampering, paint_words

    def box(x1, y1, x2, y2):
        return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32)

    truth = np.zeros((100, 200), np.uint8)
    truth[10:30, 10:60] = 2  # one forged word, 20 pixels tall
    truth[40:90, 100:180] = 1
    scored = [box(10, 10, 59, 29), box(100, 40, 179, 89), box(10, 60, 30, 70)]  # 20, 50 and 11 pixels tall
    painted = [box(5, 8, 64, 31), box(95, 36, 184, 93), box(8, 28, 32, 72)]  # the last reaches into the first
    probabilities = np.array([0.9, 0.7, 0.1])
    decided = WordTampering(paint_words(truth.shape, painted, probabilities > 0.5), painted, probabilities, 0.5, scored)
    heights = WordHeights()
    heights.update(truth, decided)
    rows = {row["height"]: row for row in heights.summary()}
    assert len(rows) == len(HEIGHT_BINS) and heights.forged_pixels == 1000
    assert (rows["18-26"]["forged_words"], rows["18-26"]["forged_flagged"]) == (1, 1)
    assert (rows["40-70"]["genuine_words"], rows["40-70"]["genuine_flagged"]) == (1, 1)  # a big false alarm
    assert (rows["0-18"]["genuine_words"], rows["0-18"]["genuine_flagged"]) == (1, 0)
    assert rows["18-26"]["forged_pixel_share"] == 1.0 and rows["0-18"]["forged_pixel_share"] == 0.0
    assert sum(row["forged_words"] for row in rows.values()) == 1


def test_forged_boxes_are_counted_by_what_was_done_to_them():
    """ForgedBoxes: each forged box with a record in its groups (kind, how, the file's history), small and big apart,
    with its forged pixels and those painted tampered; forged pixels of images without a record count in the total."""
    from upocr.evaluate.forensic import BIG_FORGERY, ForgedBoxes

    truth = np.zeros((100, 200), np.uint8)
    boxes = [(10, 10, 59, 29, 2), (100, 20, 179, 79, 2), (10, 60, 40, 70, 1)]  # 20 and 60 px tall forgeries, a word
    for x1, y1, x2, y2, label in boxes:
        truth[y1:y2 + 1, x1:x2 + 1] = label
    classes = np.zeros_like(truth)
    classes[10:30, 10:35] = 2  # half the small retype painted
    classes[20:80, 100:120] = 2  # a quarter of the big splice
    retype = {"kind": "retype", "erased": "inpainted (Telea)", "font": "the word's", "blur": "blurrier",
              "blur_sigma": 1.5, "scene_blur_sigma": 0.5, "noise": 0.0, "own_jpeg": 70}
    record = {"photo": "lossless", "after_edits": ["resampled 0.70"], "saved": "jpeg 80",
              "words": [retype, {"kind": "splice", "scale": 1.2, "edge": "the whole box"}, None]}
    counted = ForgedBoxes()
    counted.update(truth, boxes, record, classes)
    counted.update(truth, boxes, None, classes)  # a second image without a record: in the total only
    rows = {(row["facet"], row["value"]): row for row in counted.summary()}
    assert counted.forged_pixels == 2 * (1000 + 4800) and 60 >= BIG_FORGERY > 20
    retyped, spliced = rows[("kind", "retype")], rows[("kind", "splice")]
    assert (retyped["boxes"], retyped["big_boxes"], retyped["recall"]) == (1, 0, 0.5)
    assert (spliced["boxes"], spliced["big_boxes"], spliced["recall_big"]) == (0, 1, 0.25)
    assert retyped["pixel_share"] == 1000 / 11600 and np.isnan(retyped["recall_big"])
    assert rows[("retype: blur against the scene's", "blurrier")]["boxes"] == 1
    assert rows[("retype: own noise", "none")]["boxes"] == 1 and rows[("paste: edge", "the whole box")]["big_boxes"] == 1
    both = rows[("file: after the edits", "re-processed")]
    assert (both["boxes"], both["big_boxes"]) == (1, 1) and both["recall"] == (500 + 1200) / 5800
    assert both["big_pixel_share"] == 4800 / 5800 and ("kind", "copy-move") not in rows
    # a miss splits into boxes never painted and the unpainted part of those painted: here both boxes were touched,
    assert both["flagged_box_share"] == 1 and both["flagged_box_coverage"] == both["recall"]
    classes[20:80, 100:120] = 0  # and with the splice left unpainted, only the retype's pixels count as flagged
    counted = ForgedBoxes(examples=2)  # keeping crops of the big misses: the splice, not the small retype
    image = np.zeros(truth.shape + (3,), np.uint8)
    counted.update(truth, boxes, record, classes, image)
    both = {(row["facet"], row["value"]): row for row in counted.summary()}[("file: after the edits", "re-processed")]
    assert both["flagged_box_share"] == 1000 / 5800 and both["flagged_box_coverage"] == 0.5
    crop = counted.missed["splice"][0]  # half the box's height around it, cut at the image's edges
    assert list(counted.missed) == ["splice"] and crop.shape == (100, 30 + 80 + 20, 3)
    assert (crop[20, 30:110] == (255, 0, 0)).all() and not crop[21:79, 32:108].any()  # the box drawn in red
    sheet = counted.missed_sheet()
    assert sheet.ndim == 3 and sheet.shape[0] > 96 and ForgedBoxes().missed_sheet() is None


def test_the_paths_false_alarms_swept_over_thresholds_in_one_pass(tiny_weights, tmp_path):
    """pipeline_false_alarm_sweep: the predictor's own maps under None, each threshold's from the same words."""
    from upocr.evaluate.forensic import pipeline_false_alarm_sweep, pipeline_false_alarms
    from upocr.evaluate.real import RealSample
    from upocr.predict import Predictor

    image, boxes = page(np.random.default_rng(6))
    cv2.imwrite(str(tmp_path / "page.png"), image)
    polygons = tuple(np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32) for x1, y1, x2, y2 in boxes)
    samples = [RealSample(tmp_path / "page.png", "scene-boxes", polygons, (), True)]  # no flags: every word genuine
    assert samples[0].tampered == (False,) * len(boxes)
    with pytest.raises(ValueError, match="page.png: 1 tampered flags for 6 words"):
        RealSample(tmp_path / "page.png", "scene-boxes", polygons, (), True, tampered=(True,))
    predictor = Predictor(weights=tiny_weights, size=64, tile=None, tampering="words")
    sweep = pipeline_false_alarm_sweep(samples, predictor, [0.0, 1.01], progress=False)
    own = pipeline_false_alarms(samples, predictor, progress=False)
    assert sorted(sweep, key=str) == [0.0, 1.01, None] and sweep[None].genuine_flagged == own.genuine_flagged
    assert sweep[0.0].genuine_flagged > 0 == sweep[1.01].genuine_flagged  # every found word flagged / none
    assert sweep[0.0].genuine_pixels == sweep[None].genuine_pixels and len(sweep[0.0].seconds) == 0


def test_the_evaluation_script_scores_the_classifier_on_synthetic_forgeries(tmp_path, capsys):
    """scripts/eval_tampering_words.py (docs/tampering.md's tables), on a tiny synthetic set: every finder row."""
    import importlib.util
    import json
    from pathlib import Path

    from upocr.data.synth import generate_dataset

    generate_dataset(tmp_path / "data", count=3, seed=5, size=128, tasks=["tampering"], workers=1, progress=False)
    script = Path(__file__).resolve().parents[1] / "scripts" / "eval_tampering_words.py"
    spec = importlib.util.spec_from_file_location("eval_tampering_words", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--synthetic", f"{tmp_path / 'data'}:train", "--finders", "gt", "detector", "detector-words",
                        "--json", str(tmp_path / "scores.json")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("(train) |") == 3  # one row per finder
    scores = json.loads((tmp_path / "scores.json").read_text())["synthetic"]
    assert len(scores) == 3 and all(row["images"] == 3 and 0 <= row["miou"] <= 1 for row in scores.values())
    # --thresholds: the detect-tampering path's words repainted at each, rows from the same pass.
    assert module.main(["--synthetic", f"{tmp_path / 'data'}:train", "--pipeline", "--thresholds", "0", "1.01",
                        "--by-height", "--by-edit", "--missed-sheet", str(tmp_path / "sheets"), "--limit", "1",
                        "--json", str(tmp_path / "swept.json")]) == 0
    printed = capsys.readouterr().out
    assert "repainted at 0 |" in printed and "| >= 70 |" in printed and "| kind | retype |" in printed
    swept = json.loads((tmp_path / "swept.json").read_text())["synthetic"]
    key = f"{tmp_path / 'data'}:train:pipeline"
    assert swept[f"{key}@0"]["real_iou"] == 0 < swept[key]["real_iou"]  # at 0 every found word is tampered
    assert swept[f"{key}@1.01"]["real_iou"] == swept[key]["real_iou"] and swept[f"{key}@1.01"]["tampered_recall"] == 0
    by_height = swept[key]["by_height"]  # the path's own decisions only: the repainted rows have none
    assert len(by_height) == 5 and sum(row["forged_pixel_share"] for row in by_height) <= 1
    assert "by_height" not in swept[f"{key}@0"]
    by_edit = {(row["facet"], row["value"]): row for row in swept[key]["by_edit"]}  # v1: every forgery retyped
    assert by_edit[("kind", "retype")]["pixel_share"] == 1 and 0 <= by_edit[("kind", "retype")]["recall"] <= 1
    with pytest.raises(SystemExit):  # the sweep repaints the path's words: without --pipeline there are none
        module.main(["--synthetic", f"{tmp_path / 'data'}:train", "--thresholds", "0.5"])


def test_a_trained_classifier_file_decides_and_a_bad_one_stops_before_any_image(tiny_weights, tmp_path, capsys):
    import dataclasses

    from upocr.cli import main
    from upocr.forensics.detect import bundled_classifier, load_word_classifier
    from upocr.predict import Predictor

    image, _ = page(np.random.default_rng(6))
    eager = dataclasses.replace(bundled_classifier(), threshold_probability=1e-12)  # flags every word
    eager.save(tmp_path / "eager.npz")
    predictor = Predictor(weights=tiny_weights, size=64, tile=None, tampering="words",
                          tampering_classifier=tmp_path / "eager.npz")
    found = predictor.predict(image[..., ::-1].copy(), "tampering")
    assert found.words and all(word["tampered"] for word in found.words)
    stranger = dataclasses.replace(bundled_classifier(), feature_names=tuple(reversed(FEATURE_NAMES)))
    stranger.save(tmp_path / "stranger.npz")
    cv2.imwrite(str(tmp_path / "page.png"), image)
    assert main(["detect-tampering", str(tmp_path / "page.png"), "-o", str(tmp_path / "out"), "--weights",
                 str(tiny_weights), "--size", "64", "--tampering", "words",
                 "--tampering-classifier", str(tmp_path / "stranger.npz")]) == 1
    err = capsys.readouterr().err
    assert "stranger.npz: trained on other features" in err and err.count("\n") == 1 and "Traceback" not in err
    # The same names measured another way (a file from before the seams' version 2) are refused too.
    assert bundled_classifier().record["features_version"] == FEATURES_VERSION  # the bundled file is measured as now
    older = dataclasses.replace(bundled_classifier(), record={**bundled_classifier().record, "features_version": 1})
    with pytest.raises(ClassifierError, match=f"older.npz: trained on features version 1, this upocr measures version {FEATURES_VERSION}"):
        load_word_classifier(older.save(tmp_path / "older.npz"))
    assert not (tmp_path / "out").exists()


def test_word_crops_are_compared_with_the_other_words_of_their_image():
    from upocr.forensics.cnn import CROP_CHANNELS, WORD_CROP, compare_within_image, word_crops
    from upocr.forensics.features import image_maps

    image, boxes = page(np.random.default_rng(4))
    maps = image_maps(image)
    crops = word_crops(maps, np.array(boxes + [(400, 5, 420, 25)], float), WORD_CROP)  # the last lies outside: zeros
    assert crops.shape == (len(boxes) + 1, *WORD_CROP.shape) and crops.dtype == np.float16
    assert not crops[-1].any() and crops[:-1, 1:].mean() > 0  # error levels and residual are positive before
    assert abs(float(crops[0, 0].astype(np.float32).mean())) < 0.05  # grey: standardised per crop
    # Each map channel minus its peers' level: the other words of about its height, else all the others.
    levels = np.array([1.0, 2.0, 4.0, 8.0], np.float32)
    made = np.zeros((4, len(CROP_CHANNELS) + 1, 2, 2), np.float32)  # + the line layout's word mask: not compared
    made[:, 1:] = levels[:, None, None, None]
    made[:, 0] = 5.0
    compared = compare_within_image(made, np.array([20, 21, 19, 40]))
    np.testing.assert_allclose(compared[:, 1, 0, 0], [1 - 3, 2 - 2.5, 4 - 1.5, 8 - 2])
    assert np.all(compared[:, 0] == 5.0)  # the grey channel is not compared
    np.testing.assert_array_equal(compared[:, -1, 0, 0], levels)  # nor the word mask
    assert compare_within_image(np.ones((1, 6, 2, 2), np.float32), np.array([10]))[0, 1:].max() == 0  # alone: itself


def test_line_crops_show_the_word_among_its_neighbours_at_one_scale():
    from upocr.forensics.cnn import LINE_CROP, WORD_CROP, word_crops
    from upocr.forensics.features import image_maps

    image, boxes = page(np.random.default_rng(4))
    maps = image_maps(image)
    height, width = image.shape[:2]
    x1, y1, x2, y2 = boxes[0]
    word_height = y2 - y1 + 1
    moved = (0, y1, x2 - x1, y2)  # the same box at the image's left edge
    crops = word_crops(maps, np.array([boxes[0], moved, (width + 900, 5, width + 920, 25)], float), LINE_CROP)
    assert crops.shape == (3, 7, 32, 192) and LINE_CROP.channels[-1] == "word"
    assert not crops[2].any()  # far outside the image: zeros
    mask = crops[0, -1].astype(bool)
    columns, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    # 1.6 x the word's height tall (0.3 above and below), at least 6 x that wide, the word in the middle
    assert abs(rows[0] - 32 * 0.3 / 1.6) <= 1.5 and abs(rows[-1] + 1 - 32 * 1.3 / 1.6) <= 1.5
    crop_width = max(x2 - x1 + 1 + 0.6 * word_height, 6 * 1.6 * word_height)
    assert abs((columns[-1] + 1 - columns[0]) - 192 * (x2 - x1 + 1) / crop_width) <= 2
    assert abs((columns[0] + columns[-1] + 1) / 2 - 96) <= 1.5
    # At the edge the window keeps its scale and place (the image is mirrored in): the word's mark is where it
    # was; word crops are clipped to the image instead, so the same word is stretched differently.
    np.testing.assert_array_equal(crops[1, -1], crops[0, -1])
    assert crops[1, 0, :, :80].astype(np.float32).std() > 0.1  # mirrored page, not a blank pad
    word = word_crops(maps, np.array([boxes[0], moved], float), WORD_CROP)
    assert not np.allclose(word[0, 0].astype(np.float32), word[1, 0].astype(np.float32), atol=0.5)


def test_a_huge_word_at_the_edge_is_shrunk_before_it_is_mirrored(monkeypatch):
    from upocr.forensics import cnn
    from upocr.forensics.features import image_maps

    rng = np.random.default_rng(8)
    image = cv2.GaussianBlur(rng.integers(0, 255, (600, 420, 3), np.uint8), (0, 0), 3)
    cv2.putText(image, "BIG", (0, 520), cv2.FONT_HERSHEY_SIMPLEX, 14, (20, 20, 20), 40)
    maps = image_maps(image)
    huge = np.array([(0, 140, 400, 520)], float)  # 381 px tall: its window (611 x 3,666) leaves the image
    fast = cnn.word_crops(maps, huge, cnn.LINE_CROP).astype(np.float32)
    monkeypatch.setattr(cnn, "SHRINK_BEFORE_MIRRORING", 10 ** 6)  # mirror the whole window, then shrink it
    exact = cnn.word_crops(maps, huge, cnn.LINE_CROP).astype(np.float32)
    assert fast.shape == exact.shape == (1, 7, 32, 192)
    np.testing.assert_array_equal(fast[0, -1], exact[0, -1])  # the word's mark is where it was
    # Not the same pixels (mirrored at another scale), but the same picture: within a fifth of the maps' size
    difference = np.abs(fast - exact)[0, :6].mean(axis=(1, 2))
    assert np.all(difference < 0.2 * np.abs(exact)[0, :6].mean(axis=(1, 2))) and difference.max() > 0


def test_the_crop_cnn_trains_in_bf16_only_where_the_cpu_has_it_unless_asked():
    from upocr.forensics.cnn import training_precision

    assert training_precision("auto") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert training_precision("fp32") == "fp32" and training_precision("bf16") == "bf16"
    for other in ("fp16", "half"):  # fp16 trains only on CUDA (loss scaling); this network trains on the CPU
        with pytest.raises(ValueError, match=f"precision must be fp32, bf16 or auto, not '{other}'"):
            training_precision(other)


def test_the_crop_cnn_learns_a_trace_and_its_blend_survives_saving(tmp_path):
    from upocr.forensics.cnn import WORD_CROP, train_crop_net
    from upocr.forensics.train import roc_auc

    rng = np.random.default_rng(5)
    labels = (rng.random(480) < 0.25).astype(np.int8)
    crops = rng.normal(0, 1, (480, *WORD_CROP.shape)).astype(np.float16)
    crops[labels == 1, 2, 8:24, 20:70] += 1.5  # tampered words: a higher error level inside the word
    net = train_crop_net(crops[:400], labels[:400], layout=WORD_CROP, epochs=3, batch=64, progress=False)
    assert roc_auc(net.logits(crops[400:]), labels[400:]) > 0.9  # words it never saw
    # trained in channels_last, exported as plain C-order arrays (what the npz file and numpy's reader expect)
    assert all(value.flags.c_contiguous for value in net.weights.values())
    # "auto" (bf16 where this CPU has it natively, else fp32) learns the trace as well
    automatic = train_crop_net(crops[:400], labels[:400], layout=WORD_CROP, epochs=3, batch=64, precision="auto",
                               progress=False)
    assert roc_auc(automatic.logits(crops[400:]), labels[400:]) > 0.9
    # rows of the whole array (read in place, no copy) train the same network as those rows copied out
    rows = np.flatnonzero(np.arange(480) % 3 != 0)
    on_rows = train_crop_net(crops, labels, layout=WORD_CROP, rows=rows, epochs=1, batch=64, progress=False)
    copied = train_crop_net(crops[rows], labels[rows], layout=WORD_CROP, epochs=1, batch=64, progress=False)
    for name, value in copied.weights.items():
        np.testing.assert_allclose(on_rows.weights[name], value, atol=1e-6, err_msg=name)
    held = np.flatnonzero(np.arange(480) % 3 == 0)
    np.testing.assert_allclose(on_rows.logits(crops, rows=held), copied.logits(crops[held]), atol=1e-5)
    features = rng.normal(size=(300, len(FEATURE_NAMES)))
    trees = sklearn_ensemble.HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(features, features[:, 0] > 0)
    ensemble = from_sklearn(trees, FEATURE_NAMES, 0.6, {"note": "blend"})
    ensemble.crop_net = net
    loaded = load_classifier(ensemble.save(tmp_path / "blend.npz"))
    assert loaded.crop_net is not None and loaded.crop_net.blend_weight == net.blend_weight
    np.testing.assert_allclose(loaded.crop_net.logits(crops[400:]), net.logits(crops[400:]), atol=1e-6)
    # the blend: sigmoid of the weighted mean of both log-odds
    p = np.array([0.2, 0.9])
    logits = np.array([1.0, -2.0])
    w = net.blend_weight
    expected = 1 / (1 + np.exp(-((1 - w) * np.log(p / (1 - p)) + w * logits)))
    np.testing.assert_allclose(net.blend_logits(p, logits), expected)
    # Files of format 3 (session 15, no layout named) cut word crops; unknown layouts are refused in one line.
    with np.load(tmp_path / "blend.npz", allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    assert str(arrays["format"]) == "upocr-tampering-trees-4" and str(arrays["crop_net_layout"]) == "word"
    older = {name: value for name, value in arrays.items() if name != "crop_net_layout"}
    np.savez(tmp_path / "format3.npz", **{**older, "format": np.array("upocr-tampering-trees-3")})
    assert load_classifier(tmp_path / "format3.npz").crop_net.layout == WORD_CROP
    np.savez(tmp_path / "future.npz", **{**arrays, "crop_net_layout": np.array("page")})
    with pytest.raises(ClassifierError, match="future.npz: unknown crop layout 'page'"):
        load_classifier(tmp_path / "future.npz")
    with pytest.raises(ValueError, match="crops of shape"):  # crops cut by another layout
        net.logits(np.zeros((2, 7, 32, 192), np.float16))
    # On a page, the word's probability is the blend of the trees' and the CNN's.
    image, boxes = page(np.random.default_rng(6))
    trees_only = score_words(image, boxes, TreeEnsemble(**{**ensemble.__dict__, "crop_net": None}))
    assert not np.allclose(score_words(image, boxes, loaded), trees_only)
    # Weights that do not fit the network: one line naming the file.
    arrays["crop_net_w_head.weight"] = np.zeros((1, 3), np.float32)
    np.savez(tmp_path / "broken.npz", **arrays)
    with pytest.raises(ClassifierError, match="broken.npz: crop CNN weights do not fit the network"):
        load_classifier(tmp_path / "broken.npz")


def test_the_crop_cnn_runs_with_its_batch_norms_folded_and_the_same_outputs():
    import torch

    from upocr.forensics.cnn import LINE_CROP, CropNet, WordCropCNN

    torch.manual_seed(0)
    trained = WordCropCNN(channels=7).train()
    with torch.no_grad():  # batch norms that moved away from the identity, as training leaves them
        trained(torch.randn(64, 7, 32, 192) * 3 + 1)
        for module in trained.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 2.0)
                module.bias.uniform_(-1.0, 1.0)
    trained.eval()
    net = CropNet({name: value.numpy().copy() for name, value in trained.state_dict().items()},
                  np.zeros(7, np.float32), np.ones(7, np.float32), layout=LINE_CROP)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in net.module().modules())
    crops = np.random.default_rng(0).normal(size=(70, 7, 32, 192)).astype(np.float16)
    with torch.inference_mode():
        expected = trained(torch.from_numpy(crops.astype(np.float32))).double().numpy()
    np.testing.assert_allclose(net.logits(crops), expected, atol=1e-4)
    np.testing.assert_allclose(net.logits(crops, batch=7), expected, atol=1e-4)  # batches do not matter


def test_image_crops_equal_the_word_crops_compared_within_the_image():
    from upocr.forensics.cnn import LINE_CROP, compare_within_image, image_crops, word_crops
    from upocr.forensics.features import image_maps

    image, boxes = page(np.random.default_rng(6))
    maps = image_maps(image)
    crops = image_crops(maps, boxes, LINE_CROP)
    heights = np.array([box[3] - box[1] + 1 for box in boxes])
    in_float16 = compare_within_image(word_crops(maps, np.array(boxes, float), LINE_CROP), heights)
    assert crops.dtype == np.float16 and crops.shape == in_float16.shape
    # Cut and compared in float32, rounded once: within float16's rounding of the float16 path's two steps.
    np.testing.assert_allclose(crops.astype(np.float32), in_float16.astype(np.float32), atol=4e-3)


def test_a_line_crop_cnn_scores_a_page_and_survives_saving(tmp_path):
    from upocr.forensics.cnn import LINE_CROP, image_crops, train_crop_net
    from upocr.forensics.features import image_maps

    image, boxes = page(np.random.default_rng(6))
    crops = image_crops(image_maps(image), boxes, LINE_CROP)
    labels = np.arange(len(crops)) % 2
    net = train_crop_net(crops, labels, layout=LINE_CROP, epochs=1, batch=8, progress=False)
    assert net.layout == LINE_CROP and net.mean.shape == (7,)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, len(FEATURE_NAMES)))
    trees = sklearn_ensemble.HistGradientBoostingClassifier(max_iter=5, random_state=0)
    ensemble = from_sklearn(trees.fit(features, features[:, 0] > 0), FEATURE_NAMES, 0.6, {})
    ensemble.crop_net = net
    loaded = load_classifier(ensemble.save(tmp_path / "line.npz"))
    assert loaded.crop_net.layout == LINE_CROP
    np.testing.assert_allclose(loaded.crop_net.logits(crops), net.logits(crops), atol=1e-6)
    # detect-tampering's scoring cuts the crops the file's network was trained on
    expected = net.blend(TreeEnsemble(**{**ensemble.__dict__, "crop_net": None}).probability(
        word_features(image, boxes)), crops)
    np.testing.assert_allclose(score_words(image, boxes, loaded), expected, atol=1e-6)


def test_a_committee_averages_its_members_log_odds_and_survives_saving(tmp_path):
    from upocr.forensics.cnn import LINE_CROP, CropCommittee, image_crops, train_crop_net
    from upocr.forensics.features import image_maps
    from upocr.forensics.model import average_ensembles

    image, boxes = page(np.random.default_rng(6))
    crops = image_crops(image_maps(image), boxes, LINE_CROP)
    labels = np.arange(len(crops)) % 2
    nets = tuple(train_crop_net(crops, labels, layout=LINE_CROP, epochs=1, batch=8, seed=seed, progress=False)
                 for seed in (0, 1))
    committee = CropCommittee(nets)
    assert not np.allclose(nets[0].logits(crops), nets[1].logits(crops))  # two seeds, two networks
    np.testing.assert_allclose(committee.logits(crops), (nets[0].logits(crops) + nets[1].logits(crops)) / 2)
    # The trees: side by side, each leaf halved, so the log-odds are the mean of the two ensembles'.
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, len(FEATURE_NAMES)))
    members = [from_sklearn(sklearn_ensemble.HistGradientBoostingClassifier(max_iter=4 + seed, random_state=seed).fit(
        features, features[:, seed] > 0), FEATURE_NAMES, 0.5, {}) for seed in (0, 1)]
    trees = average_ensembles(members, threshold_probability=0.6, record={"note": "committee"})
    np.testing.assert_allclose(trees.raw_score(features[:20]),
                               (members[0].raw_score(features[:20]) + members[1].raw_score(features[:20])) / 2)
    assert len(trees.roots) == 9 and trees.threshold_probability == 0.6
    trees.crop_net = committee
    loaded = load_classifier(trees.save(tmp_path / "committee.npz"))
    assert isinstance(loaded.crop_net, CropCommittee) and len(loaded.crop_net.nets) == 2
    np.testing.assert_allclose(score_words(image, boxes, loaded), score_words(image, boxes, trees), atol=1e-6)
    # ... each word: the mean of the two members' blended log-odds (the blend is linear in the log-odds)
    def log_odds(p):
        return np.log(p / (1 - p))
    singles = [score_words(image, boxes, TreeEnsemble(**{**member.__dict__, "crop_net": net}))
               for member, net in zip(members, nets)]
    np.testing.assert_allclose(log_odds(score_words(image, boxes, loaded)),
                               (log_odds(singles[0]) + log_odds(singles[1])) / 2, atol=1e-5)
    # A committee file names its size; a committee of one, or members of other layouts, are refused.
    with np.load(tmp_path / "committee.npz", allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    assert str(arrays["format"]) == "upocr-tampering-trees-5" and int(arrays["crop_net_members"]) == 2
    np.savez(tmp_path / "one.npz", **{**arrays, "crop_net_members": np.array(1)})
    with pytest.raises(ClassifierError, match="one.npz: a committee of 1 crop CNNs"):
        load_classifier(tmp_path / "one.npz")
    np.savez(tmp_path / "three.npz", **{**arrays, "crop_net_members": np.array(3)})
    with pytest.raises(ClassifierError, match="three.npz: not a readable tampering classifier"):
        load_classifier(tmp_path / "three.npz")  # the third member's arrays are missing
    with pytest.raises(ValueError, match="two crop CNNs or more"):
        CropCommittee(nets[:1])


def test_train_tampering_help_states_the_trainers_tree_defaults(capsys):
    # The command line leaves the defaults to the trainer (it does not import torch to build itself); its help
    # repeats them, so it must follow when they change.
    from upocr.cli import main
    from upocr.forensics.train import LEARNING_RATE, MAX_ITER, MAX_LEAF_NODES

    with pytest.raises(SystemExit):
        main(["train-tampering", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    from upocr.forensics.cnn import WIDTH

    for option, value in (("--max-iter", MAX_ITER), ("--learning-rate", LEARNING_RATE), ("--max-leaf-nodes", MAX_LEAF_NODES),
                          ("--cnn-width", WIDTH)):
        assert f"(default {value}" in text.split(option, 2)[-1].split("--", 1)[0], option
    # ... and names the crop layouts, the trainer's default first
    from upocr.commands.forensics import CROP_LAYOUT_NAMES
    from upocr.forensics.cnn import CROP_LAYOUTS, DEFAULT_CROP_LAYOUT

    assert set(CROP_LAYOUT_NAMES) == set(CROP_LAYOUTS) and CROP_LAYOUT_NAMES[0] == DEFAULT_CROP_LAYOUT.name
    # ... and the crop CNN's training precisions, the trainer's default first
    from upocr.commands.forensics import CNN_PRECISIONS
    from upocr.forensics.cnn import TRAINING_PRECISIONS

    assert CNN_PRECISIONS == TRAINING_PRECISIONS
