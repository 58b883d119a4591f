"""`upocr train-tampering`: train the per-word tampering classifier from synthetic forgeries."""

from __future__ import annotations

import argparse
import json
import sys

from upocr.commands import positive

# `upocr.forensics.cnn.CROP_LAYOUTS`, the default first (named here: that module imports torch; tested to agree)
CROP_LAYOUT_NAMES = ("line", "word")
# `upocr.forensics.cnn.TRAINING_PRECISIONS`, the default first (named here for the same reason; tested to agree)
CNN_PRECISIONS = ("fp32", "bf16", "auto")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-tampering",
        help="train the per-word tampered-text classifier (gradient-boosted trees on forensic features, "
             "and a crop CNN)",
        description="Measure forensic features of every ground-truth word of Tampered-IC13-layout data (e.g. "
                    "`upocr synth --tasks tampering`, v1 and v2), train gradient-boosted trees, choose the "
                    "threshold on held-back images for a false-alarm rate, and write the classifier (npz, no "
                    "pickle) with its training record. See docs/tampering.md.",
    )
    parser.add_argument("--data", nargs="+", required=True, metavar="DATA_ROOT", help="data roots (synth output)")
    parser.add_argument("--out", required=True, metavar="FILE", help="classifier file to write (.npz)")
    parser.add_argument("--split", default="train", choices=["train", "test"], help="split to train on (default train)")
    parser.add_argument("--false-alarm-rate", type=positive(float), default=0.01, metavar="R",
                        help="share of genuine validation words the threshold may flag: of the detector's words with "
                             "--detector-every (the words detect-tampering scores), else of all (default 0.01)")
    parser.add_argument("--validation-share", type=positive(float), default=0.2, metavar="S",
                        help="share of images held back to choose the threshold (default 0.2)")
    # The trees' defaults live with the trainer (upocr.forensics.train: MAX_ITER, LEARNING_RATE, MAX_LEAF_NODES),
    # which imports torch: not loaded to build the command line.
    parser.add_argument("--max-iter", type=positive(int), default=None,
                        help="boosting rounds at most (default 300)")
    parser.add_argument("--learning-rate", type=positive(float), default=None, help="boosting learning rate (default 0.08)")
    parser.add_argument("--max-leaf-nodes", type=positive(int), default=None, help="leaves per tree (default 31; larger trees: docs/tampering-log.md, session 16)")
    parser.add_argument("--limit", type=positive(int), default=None, help="use only the first N images")
    parser.add_argument("--features", default=None, metavar="FILE",
                        help="feature cache (npz): read from it when it exists, else measure and write it")
    parser.add_argument("--detector-every", type=int, default=0, metavar="K",
                        help="every K-th image also adds the words `detect-tampering --tampering words` scores there (the "
                             "bundled word detector's lines split into words), labelled "
                             "by their overlap with tampered boxes, so the trees also learn the regions a finder gives; "
                             "0 = off (default; the shipped classifier used 1)")
    parser.add_argument("--context", action="store_true",
                        help="also train a second look: trees that read each word's features plus the first look's "
                             "verdicts on the other words of its image and line (off by default: it raised recall on "
                             "synthetic forgeries, which change several words, and lowered it on single real "
                             "copy-moves; docs/tampering.md)")
    parser.add_argument("--cnn-epochs", type=int, default=6, metavar="N",
                        help="also train the crop CNN for N epochs (a small network over each word's error-level "
                             "and noise maps; its log-odds are averaged with the trees'); 0 = trees only "
                             "(default 6, as shipped: about 13 minutes a network on 2 cores for 3,000 images; 7 with "
                             "--precision bf16 on a CPU with AVX512-BF16)")
    parser.add_argument("--cnn-width", type=positive(int), default=None, metavar="N",
                        help="channels of the crop CNN's first convolution, then 2N and 4N (default 16, as shipped); "
                             "its cost per word grows with N squared")
    parser.add_argument("--precision", choices=CNN_PRECISIONS, default=CNN_PRECISIONS[0],
                        help="the crop CNN's training arithmetic: fp32 (default, as the bundled file); bf16 where the "
                             "CPU computes it natively (AVX512-BF16 or AMX) trains the networks in about 0.55 x the "
                             "time with the same validation AUC (one such committee flagged more real text: "
                             "docs/tampering.md), elsewhere it is emulated and many times slower; auto: bf16 where "
                             "native, else fp32")
    parser.add_argument("--crop-layout", choices=CROP_LAYOUT_NAMES, default=CROP_LAYOUT_NAMES[0],
                        help="what the crop CNN sees of each word: 'line' (default) the word and its line neighbours "
                             "at one scale, with a channel marking the word; 'word' the word's box alone, stretched "
                             "(session 15's files)")
    parser.add_argument("--crops-file", default=None, metavar="FILE",
                        help="hold the crop CNN's crops in FILE (a memory-mapped .npy, 86 KB per word for line "
                             "crops: 12 GB for 3,000 images) instead of in memory, so training fits the machine's "
                             "memory; the file is removed at the end")
    parser.add_argument("--members", type=positive(int), default=1, metavar="N",
                        help="train a committee of N classifiers (trees and crop CNN) from seeds SEED ... SEED+N-1 on "
                             "the same features and crops, their log-odds averaged (one more CNN training and one "
                             "more CNN pass per word each: about 13 minutes and 0.3 s per 500 words on 2 cores; "
                             "the bundled classifier: 2, so its verdicts depend less on one seed); default 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from upocr.data.layouts import LayoutError
    from upocr.forensics.cnn import CROP_LAYOUTS
    from upocr.forensics.train import train_classifier

    if not 0 < args.false_alarm_rate < 1 or not 0 < args.validation_share < 1:
        print("upocr train-tampering: error: --false-alarm-rate and --validation-share must be between 0 and 1",
              file=sys.stderr)
        return 2
    # Options left out keep fit's defaults (the shipped settings).
    settings = {name: value for name in ("max_iter", "learning_rate", "max_leaf_nodes", "cnn_width")
                if (value := getattr(args, name)) is not None}
    finder = None
    try:
        if args.detector_every > 0:
            from upocr.detector import WordDetector
            from upocr.forensics.detect import split_into_words

            detector = WordDetector()

            def finder(image):
                # The words as `detect-tampering` scores them (as found; it paints them grown): trained on
                # the grown ones instead, the trees did worse on re-typed digits in real photos, v2 forgeries
                # and their found-word validation recall (docs/tampering.md).
                return split_into_words(image, detector.detect(image).polygons)

        ensemble = train_classifier(args.data, args.out, split=args.split, limit=args.limit,
                                    false_alarm_rate=args.false_alarm_rate, validation_share=args.validation_share,
                                    seed=args.seed, members=args.members, context=args.context,
                                    features_file=args.features, finder=finder, finder_every=args.detector_every,
                                    cnn_epochs=max(0, args.cnn_epochs), crop_layout=CROP_LAYOUTS[args.crop_layout],
                                    crops_file=args.crops_file, cnn_precision=args.precision, **settings)
    except (LayoutError, ValueError, OSError, ImportError) as error:
        print(f"upocr train-tampering: error: {error}", file=sys.stderr)
        return 2
    record = ensemble.record
    print(json.dumps({key: record[key] for key in ("images", "words", "tampered_words", "iterations", "threshold",
                                                     "validation", "total_seconds")}, indent=1))
    print(f"wrote {args.out}")
    return 0
