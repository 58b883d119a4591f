"""The training record saved with weights: one type that the trainer writes and every reader reads."""

from __future__ import annotations

import json

from upocr.weights import DEFAULT_WEIGHTS, TrainingRecord, describe_weights, safetensors_metadata, training_record


def test_the_bundled_record_reads_and_writes_back_unchanged():
    raw = json.loads(safetensors_metadata(DEFAULT_WEIGHTS / "model.safetensors")["upocr_training"])
    record = training_record(DEFAULT_WEIGHTS)
    stages = record.stages()
    assert len(stages) >= 1 and all(stage.trained for stage in stages)
    written = record.to_dict()
    # Every key comes back; a trained stage that did not say where it started now says init: None.
    innermost, innermost_raw = written, raw
    while "init_record" in innermost_raw:
        assert {k: v for k, v in innermost.items() if k != "init_record"} == {k: v for k, v in innermost_raw.items() if k != "init_record"}
        innermost, innermost_raw = innermost["init_record"], innermost_raw["init_record"]
    assert {k: v for k, v in innermost.items() if v is not None} == innermost_raw
    assert TrainingRecord.from_json(record.to_json()) == record


def test_records_describe_themselves():
    first = TrainingRecord(trained=True, steps=10, config="small", input_size=256, images=60, data="d", seed=1)
    second = TrainingRecord(trained=True, steps=5, config="small", init="runs/a/model", input_size=256, images=30,
                            data="d", seed=2, init_record=first, extra={"future_key": 1})  # fmt: skip
    assert second.describe() == ("trained (config=small, data=d, images=30, input_size=256, steps=5; "
                                 "last of 2 stages, 90 training images in all)")  # fmt: skip
    assert second.to_dict()["future_key"] == 1 and TrainingRecord.from_dict(second.to_dict()) == second
    assert first.to_dict()["init"] is None  # trained from scratch, said so
    assert TrainingRecord(trained=False, note="random").to_dict() == {"trained": False, "note": "random"}
    assert TrainingRecord(trained=False, note="random").describe() == "UNTRAINED (random)"


def test_describe_weights_names_the_file_and_what_it_holds(tmp_path):
    assert describe_weights(tmp_path / "none.safetensors") == f"{tmp_path / 'none.safetensors'} - no training record"
    assert describe_weights(None).startswith(f"bundled default {DEFAULT_WEIGHTS} - trained (")
