"""Weights apart from the network: file formats, safe loading, checks, inference defaults and the
training record. Nothing here imports the network (`upocr.model`), which builds on this.

This folder also holds the bundled default weights (`model.safetensors` + `config.json`, DEFAULT_WEIGHTS).
"""

from upocr.weights.checks import check_finite, check_state_fits
from upocr.weights.defaults import InferenceDefaults, split_legacy_fields
from upocr.weights.formats import (
    CONFIG_FILE,
    DEFAULT_WEIGHTS,
    WEIGHTS_FILE,
    CheckpointError,
    StoredConfig,
    StoredWeights,
    bundled_inference_defaults,
    read_weights,
    safetensors_metadata,
    save_weights,
    short_reason,
    torch_load_safely,
)
from upocr.weights.record import TrainingRecord, describe_weights, training_record

__all__ = [
    "CONFIG_FILE", "DEFAULT_WEIGHTS", "WEIGHTS_FILE", "CheckpointError", "InferenceDefaults", "StoredConfig",
    "StoredWeights", "TrainingRecord", "bundled_inference_defaults", "check_finite", "check_state_fits", "describe_weights",
    "read_weights", "safetensors_metadata", "save_weights", "short_reason", "split_legacy_fields", "torch_load_safely",
    "training_record",
]  # fmt: skip
