"""Score the per-word tampering classifier: held-out synthetic forgeries, real-dev genuine text, and
copy-moves constructed from real photos (`upocr.evaluate.forensic`). Prints a markdown table.

    python scripts/eval_tampering_words.py --synthetic /tmp/t/test-v1:test /tmp/t/test-v2:test \
        --real ../shared/real-dev [--classifier FILE] [--finders gt mask] [--threshold T] [--json FILE]
    python scripts/eval_tampering_words.py --synthetic ROOT:test --real ../shared/real-dev --pipeline \
        --thresholds 0.5 0.6 --by-height           # + the path's words repainted at each threshold, same pass,
                                                   #   and its found words by height
    python scripts/eval_tampering_words.py --synthetic ROOT:test --pipeline --by-edit
                                                   # + the forged pixels the path paints, by kind of forgery
                                                   #   (sets `upocr synth` wrote with its records)

Finders: `gt` = the ground-truth boxes / annotated polygons (the classifier alone); `mask` = the
bundled model's segmentation mask grouped into words (loads the model); `model-words` = the text
(classes 1 and 2) of the model's own tampering output, its blobs split into words (what `detect-tampering`
has without a word detector); `detector` = the bundled PP-OCR DB detector's boxes (`upocr.detector`, box
mode: often whole lines); `detector-words` = its polygons cut into words (`split_into_words`), the finder of
`detect-tampering --tampering words`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


PATH = "detect-tampering --tampering words"


def _swept(swept: float | None) -> tuple[str, str]:
    """(row name, JSON key suffix) of the path's own decisions (None) or its words repainted at a threshold."""
    return (PATH, "") if swept is None else (f"{PATH}, repainted at {swept:g}", f"@{swept:g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", default=None, help="classifier npz (default: the bundled one)")
    parser.add_argument("--synthetic", nargs="*", default=[], metavar="ROOT:SPLIT")
    parser.add_argument("--real", default=None, metavar="DIR", help="real-dev folder")
    parser.add_argument("--finders", nargs="+", default=["gt"], choices=["gt", "mask", "model-words", "detector", "detector-words"])
    parser.add_argument("--threshold", type=float, default=None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--copy-move-trials", type=int, default=5)
    parser.add_argument("--pipeline", action="store_true",
                        help="also score the whole detect-tampering path: Predictor(tampering='words') with the "
                             "bundled weights and word detector")
    parser.add_argument("--thresholds", nargs="+", type=float, default=[], metavar="T",
                        help="with --pipeline: also score the path's words repainted at each of these thresholds "
                             "(an operating curve from one run of the path)")
    parser.add_argument("--by-height", action="store_true",
                        help="with --pipeline: also the path's found words by height (forged / genuine, flagged, the "
                             "share of the forged pixels under them), per synthetic set")
    parser.add_argument("--by-edit", action="store_true",
                        help="with --pipeline: also the forged pixels the path paints tampered by kind of forgery "
                             "(retype, copy-move, splice; how the old word was erased, the blur, the file's history), "
                             "for synthetic sets written with `upocr synth`'s records")
    parser.add_argument("--missed-sheet", default=None, metavar="DIR",
                        help="with --by-edit: also a picture per synthetic set, DIR/<set>-missed.jpg, of big forged "
                             "boxes the path left mostly unpainted, a column per kind of edit")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.missed_sheet and not args.by_edit:
        parser.error("--missed-sheet shows the forgeries --by-edit counts: add --by-edit")
    if (args.thresholds or args.by_height or args.by_edit) and not args.pipeline:
        parser.error("--thresholds, --by-height and --by-edit read the decisions of the detect-tampering path: "
                     "add --pipeline")

    from upocr.evaluate.forensic import (BIG_FORGERY, copy_move_scores, model_text_words, pipeline_false_alarm_sweep,
                                         pipeline_sweep, real_false_alarms, synthetic_scores, text_mask_finder)
    from upocr.evaluate.real import read_real_samples
    from upocr.forensics.model import load_classifier
    from upocr.io import write_image

    classifier = load_classifier(args.classifier)
    threshold = classifier.threshold_probability if args.threshold is None else args.threshold
    finders = {"gt": None}
    if "mask" in args.finders:
        from upocr.predict import Predictor

        finders["mask"] = text_mask_finder(Predictor())
    if "model-words" in args.finders:
        from upocr.predict import Predictor

        model = Predictor()
        finders["model-words"] = lambda image: model_text_words(model, image)
    if "detector" in args.finders or "detector-words" in args.finders:
        from upocr.detector import WordDetector
        from upocr.forensics.detect import split_into_words

        box_detector, line_detector = WordDetector(shape="box"), WordDetector()
        finders["detector"] = lambda image: box_detector.detect(image).polygons
        finders["detector-words"] = lambda image: split_into_words(image, line_detector.detect(image).polygons)
    finders = {name: finders[name] for name in args.finders}
    results: dict = {"threshold": threshold, "synthetic": {}, "real": {}}
    lines = [f"threshold {threshold:.4f}", "",
             "| data | finder | images | tampered IoU | real IoU | mIoU | tampered P / R | word AUC | s/image |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for spec in args.synthetic:
        root, _, split = spec.rpartition(":")
        for name, finder in finders.items():
            s = synthetic_scores(root, split, classifier, threshold=threshold, finder=finder, limit=args.limit).summary()
            results["synthetic"][f"{root}:{split}:{name}"] = s
            lines.append(f"| {root} ({split}) | {name} | {s['images']} | {s['tampered_iou']:.3f} | {s['real_iou']:.3f} | "
                         f"{s['miou']:.3f} | {s['tampered_precision']:.3f} / {s['tampered_recall']:.3f} | "
                         f"{s['word_auc']:.3f} | {s['seconds_per_image']:.3f} |")
    pipeline = None
    height_rows = []  # --by-height: the path's found words by height, per synthetic set
    edit_rows = []  # --by-edit: its forged pixels by kind of forgery, per synthetic set with records
    if args.pipeline:
        from upocr.predict import Predictor

        pipeline = Predictor(tampering="words", tampering_threshold=threshold, tampering_classifier=args.classifier,
                             keep_output=False)
        for spec in args.synthetic:
            root, _, split = spec.rpartition(":")
            sweep = pipeline_sweep(root, split, pipeline, args.thresholds, limit=args.limit,
                                   missed_examples=8 if args.missed_sheet else 0)
            for swept, scores in sweep.items():
                s = scores.summary()
                finder, suffix = _swept(swept)
                results["synthetic"][f"{root}:{split}:pipeline{suffix}"] = s
                seconds = "–" if swept is not None else f"{s['seconds_per_image']:.3f}"
                lines.append(f"| {root} ({split}) | {finder} | {s['images']} | {s['tampered_iou']:.3f} | "
                             f"{s['real_iou']:.3f} | {s['miou']:.3f} | {s['tampered_precision']:.3f} / "
                             f"{s['tampered_recall']:.3f} | – | {seconds} |")
            if args.by_height and sweep[None].heights is not None:
                height_rows += [f"| {root} ({split}) | {row['height']} | {row['forged_words']} ({row['forged_flagged']}) | "
                                f"{row['genuine_words']} ({row['genuine_flagged']}) | {row['forged_pixel_share']:.3f} |"
                                for row in sweep[None].heights.summary()]
            if args.by_edit:
                if sweep[None].forgeries is None:
                    print(f"{root} ({split}): no forgery records (`upocr synth` writes them in <split>_edits); "
                          "--by-edit skips it", file=sys.stderr)
                else:
                    edit_rows += [f"| {root} ({split}) | {row['facet']} | {row['value']} | {row['boxes']} / "
                                  f"{row['big_boxes']} | {row['pixel_share']:.3f} | {row['big_pixel_share']:.2f} | "
                                  f"{row['recall']:.3f} | {row['recall_small']:.3f} / {row['recall_big']:.3f} | "
                                  f"{row['flagged_box_share']:.3f} | {row['flagged_box_coverage']:.3f} |"
                                  for row in sweep[None].forgeries.summary()]
                    sheet = sweep[None].forgeries.missed_sheet() if args.missed_sheet else None
                    if sheet is not None:
                        written = write_image(Path(args.missed_sheet) / f"{Path(root).name}-missed.jpg", sheet, quality=90)
                        print(f"{root} ({split}): missed forgeries -> {written}", file=sys.stderr)
    if edit_rows:
        lines += ["", f"| data | forged boxes by | value | boxes (under {BIG_FORGERY} px / taller) | share of the forged "
                  "pixels | of them in the taller boxes | painted tampered | under / taller | in boxes painted at all | "
                  "of those, painted |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|", *edit_rows]
    if height_rows:
        lines += ["", "| data | found words, height (px) | forged words (flagged) | genuine words (flagged) | "
                  "share of the forged pixels under them |", "|---|---|---:|---:|---:|", *height_rows]
    if args.real:
        samples = read_real_samples(args.real)
        lines += ["", "| real images | finder | false alarms (genuine text pixels flagged) | genuine words flagged | image share flagged | s/image |",
                  "|---|---|---:|---:|---:|---:|"]
        for name, finder in finders.items():
            scores, flagged, words = real_false_alarms(samples, classifier, threshold=threshold, finder=finder)
            s = scores.summary()
            results["real"][name] = {**{k: v for k, v in s.items() if k in ("false_alarms", "flagged_share", "seconds_per_image", "per_image")},
                                     "words_flagged": flagged, "words": words}
            word_column = f"{flagged} / {words}" if words else "–"
            lines.append(f"| {args.real} | {name} | {s['false_alarms']:.4f} | {word_column} | {s['flagged_share']:.4f} | {s['seconds_per_image']:.3f} |")
        if pipeline is not None:
            for swept, scores in pipeline_false_alarm_sweep(samples, pipeline, args.thresholds).items():
                s = scores.summary()
                finder, suffix = _swept(swept)
                results["real"][f"pipeline{suffix}"] = {k: s[k] for k in ("false_alarms", "flagged_share", "seconds_per_image")}
                seconds = "–" if swept is not None else f"{s['seconds_per_image']:.3f}"
                lines.append(f"| {args.real} | {finder} | {s['false_alarms']:.4f} | – | {s['flagged_share']:.4f} | {seconds} |")
        lines += ["", "| constructed copy-move | forgeries | tampered IoU | mIoU | pasted fields flagged | genuine fields flagged | word AUC |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        receipts = [s for s in samples if s.kind == "docs-boxes"]
        for label, chosen in (("receipts (docs-boxes)", receipts), ("all real-dev", samples)):
            s = copy_move_scores(chosen, classifier, threshold=threshold, trials=args.copy_move_trials).summary()
            results["real"][f"copy-move {label}"] = s
            lines.append(f"| {label} | {s['forgeries']} | {s['tampered_iou']:.3f} | {s['miou']:.3f} | "
                         f"{s['pasted_fields_flagged']:.3f} | {s['genuine_fields_flagged']:.3f} | {s['word_auc']:.3f} |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
