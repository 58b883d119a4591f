"""Synthetic pixel-level OCR data with exact ground truth, written in the benchmarks' layouts."""

from upocr.data.synth.generate import SynthError, generate_dataset, parse_size, sample_name

__all__ = ["SynthError", "generate_dataset", "parse_size", "sample_name"]
