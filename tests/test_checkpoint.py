"""Loading every supported checkpoint format, and refusing bad ones with one clear line."""

import argparse
import json
import os
import pickle
import re
import warnings

import pytest
import torch

import upocr
from upocr.model.checkpoint import read_checkpoint
from upocr.model.convert import config_from_state_dict
from upocr.weights import CheckpointError


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return upocr.build_model("tiny").eval()


def same_outputs(a, b):
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        return torch.equal(a(x, 1)[-1], b(x, 1)[-1])


def original_state_dict(model):
    """What the original saves: our keys plus the derived buffers plus (training builds) vgg16.*."""
    state = dict(model.state_dict())
    for name, module in model.named_modules():
        if hasattr(module, "relative_position_index"):
            state[f"{name}.relative_coords_table"] = module.relative_coords_table
            state[f"{name}.relative_position_index"] = module.relative_position_index
    state["vgg16.enc_1.0.weight"] = torch.zeros(64, 3, 3, 3)
    return state


def test_save_pretrained_round_trip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = upocr.load_model(tmp_path / "m")
    assert loaded.config == tiny.config and not loaded.training
    assert same_outputs(tiny, loaded)
    # The lone safetensors file carries its config in the metadata.
    assert same_outputs(tiny, upocr.load_model(tmp_path / "m" / "model.safetensors"))


def test_fp16_weights_load_as_fp32(tiny, tmp_path):
    upocr.save_pretrained(tiny, tmp_path / "half", dtype=torch.float16)
    loaded = upocr.load_model(tmp_path / "half")
    assert next(loaded.parameters()).dtype == torch.float32


def test_original_format_with_namespace_args(tiny, tmp_path):
    args = argparse.Namespace(
        swin_enc_embed_dim=16, swin_enc_depths=[1, 1, 1, 1], swin_enc_num_heads=[1, 1, 2, 2], swin_enc_window_size=4,
        swin_enc_pretrained_ws=4, swin_dec_depths=[1] * 5, swin_dec_num_heads=[2, 2, 1, 1, 1], swin_dec_window_size=4,
        swin_dec_pretrained_ws=4, tasks=["text removal", "tampered text detection", "text segmentation"],
    )
    # cpb_hidden isn't an original arg (always 512 there); tiny's 32 is read from the shapes instead.
    path = tmp_path / "orig.pth"
    torch.save({"model": original_state_dict(tiny), "args": args, "epoch": 3, "optimizer": {}}, path)
    state, config = read_checkpoint(path)
    assert not any(k.startswith("vgg16.") or "relative_" in k for k in state)
    assert config.embed_dim == 16 and config.encoder_window == 4


def test_bare_state_dict_infers_architecture(tiny, tmp_path):
    path = tmp_path / "bare.pth"
    torch.save(original_state_dict(tiny), path)
    loaded = upocr.load_model(path)
    assert loaded.config.embed_dim == tiny.config.embed_dim
    assert loaded.config.encoder_window == 4 and loaded.config.encoder_pretrained_window == 4
    assert same_outputs(tiny, loaded)
    # With DDP's "module." prefix too.
    torch.save({f"module.{k}": v for k, v in original_state_dict(tiny).items()}, path)
    assert same_outputs(tiny, upocr.load_model(path))


def test_infers_config_from_shapes_alone(tiny):
    config = config_from_state_dict(tiny.state_dict())
    assert config.encoder_depths == tiny.config.encoder_depths
    assert config.decoder_heads == tiny.config.decoder_heads
    assert not config.image_skip and not config.removal_residual
    import dataclasses

    extended = upocr.build_model(dataclasses.replace(tiny.config, image_skip=True, removal_residual=True))
    inferred = config_from_state_dict(extended.state_dict())
    assert inferred.image_skip and inferred.removal_residual


def test_missing_key_is_named(tiny, tmp_path):
    state = dict(tiny.state_dict())
    del state["proj.bias"]
    torch.save({"model": state, "config": tiny.config.to_dict()}, tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match=r"c\.pth: does not fit the model config: 1 missing keys: proj\.bias"):
        upocr.load_model(tmp_path / "c.pth")


def test_extra_and_misshaped_keys_are_named(tiny, tmp_path):
    state = dict(tiny.state_dict())
    state["decoder.extra.weight"] = torch.zeros(1)
    state["proj.bias"] = torch.zeros(5)
    torch.save({"model": state, "config": tiny.config.to_dict()}, tmp_path / "c.pth")
    with pytest.raises(CheckpointError) as info:
        upocr.load_model(tmp_path / "c.pth")
    message = str(info.value)
    assert "1 unexpected keys: decoder.extra.weight" in message
    assert "proj.bias (5,) vs (128,)" in message
    assert "\n" not in message


def test_truncated_file(tiny, tmp_path):
    path = tmp_path / "t.pth"
    torch.save(tiny.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"t\.pth: not a readable checkpoint"):
        upocr.load_model(path)


def test_truncated_safetensors(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        upocr.load_model(tmp_path / "m")


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/upocr-pwned",))


def test_malicious_pickle_is_refused_not_run(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": Exploit()}, path)
    if os.path.exists("/tmp/upocr-pwned"):
        os.remove("/tmp/upocr-pwned")
    with pytest.raises(CheckpointError, match=r"evil\.pth: refuses to unpickle .*system.*allow-list"):
        upocr.load_model(path)
    assert not os.path.exists("/tmp/upocr-pwned")


def test_plain_pickle_and_empty_and_missing(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth: file is empty"):
        upocr.load_model(tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="nope.pth: no such file"):
        upocr.load_model(tmp_path / "nope.pth")
    (tmp_path / "list.pth").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError, match="list.pth"):
        upocr.load_model(tmp_path / "list.pth")
    (tmp_path / "dir").mkdir()
    with pytest.raises(CheckpointError, match="has no model.safetensors"):
        upocr.load_model(tmp_path / "dir")


def test_cuda_request_without_cuda_is_clear(tiny, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")  # the error path only exists without CUDA
    tiny.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="CUDA is not available"):
        upocr.load_model(tmp_path / "m", device="cuda")


def test_load_into_extended_model(tiny, tmp_path):
    import dataclasses

    from upocr.model.checkpoint import load_into_extended_model

    tiny.save_pretrained(str(tmp_path / "plain"))
    extended = upocr.build_model(dataclasses.replace(tiny.config, image_skip=True, removal_residual=True))
    added = load_into_extended_model(extended, tmp_path / "plain")
    assert added == ["decoder.image_fusions.0", "decoder.image_fusions.1"]
    torch.testing.assert_close(extended.state_dict()["proj.weight"], tiny.state_dict()["proj.weight"])
    # Anything else missing is still an error naming the file.
    with pytest.raises(CheckpointError, match=r"plain.*does not fit.*only decoder\.image_fusions\. may be new"):
        load_into_extended_model(upocr.build_model(dataclasses.replace(upocr.UPOCRConfig.preset("mini"), image_skip=True)), tmp_path / "plain")


# --------------------------------------------------------------------------------------------
# Checkpoints that lie or are broken: refused early, in one line naming the file
# --------------------------------------------------------------------------------------------


def save_with_config(model, path, **changes):
    """A lone safetensors file of `model`'s weights whose metadata config has `changes` applied."""
    from safetensors.torch import save_file

    config = {**model.config.to_dict(), **changes}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"upocr_config": json.dumps(config)})
    return path


@pytest.fixture
def built_models(monkeypatch):
    """Every UPOCR constructed while the test runs, to see whether (and how) a network was built."""
    built = []
    original = upocr.UPOCR.__init__

    def counting_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(upocr.UPOCR, "__init__", counting_init)
    return built


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"embed_dim": 16384}, r"config says embed_dim 16384 but encoder\.backbone\.patch_embed\.proj\.weight is \[16, 3, 4, 4\]"),
        ({"encoder_depths": [1, 1, 10**6, 1]}, r"config says encoder_depths \[1, 1, 1000000, 1\] but the file holds blocks for \[1, 1, 1, 1\]"),
        ({"decoder_depths": [1, 1, 1, 1, 10**6]}, r"config says decoder_depths .* but the file holds blocks for \[1, 1, 1, 1, 1\]"),
        # A 200-wide window: a (40000, 40000) int64 position index per block, 48 GiB in all.
        ({"encoder_window": 200}, r"config.s window sizes \(encoder 200, decoder 4\) need \d+\.\d GiB of position buffers"),
    ],
)
def test_config_claiming_a_huge_network_fails_before_building(tiny, tmp_path, built_models, changes, message):
    path = save_with_config(tiny, tmp_path / "huge.safetensors", **changes)
    with pytest.raises(CheckpointError, match=rf"^{tmp_path}/huge\.safetensors: {message}"):
        upocr.load_model(path)
    assert built_models == []  # refused from the shapes alone: no network (not even a shape-only one)


def test_config_with_misfitting_widths_is_compared_on_a_shape_only_network(tiny, tmp_path, built_models):
    # mlp_ratio 10**6 would mean a (16M, 16) first MLP layer in every block: tens of GB if allocated.
    path = save_with_config(tiny, tmp_path / "wide.safetensors", mlp_ratio=1e6)
    with pytest.raises(CheckpointError, match=r"wide\.safetensors: does not fit the model config: .*shape mismatches.*mlp\.fc1\.weight"):
        upocr.load_model(path)
    assert len(built_models) == 1
    assert {p.device.type for p in built_models[0].parameters()} == {"meta"}


def test_loading_builds_one_network_holding_the_files_tensors(tiny, tmp_path, built_models):
    path = save_with_config(tiny, tmp_path / "ok.safetensors")
    loaded = upocr.load_model(path)
    assert len(built_models) == 1 and {p.device.type for p in loaded.parameters()} == {"cpu"}
    assert same_outputs(tiny, loaded)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_non_finite_weights_are_refused(tiny, tmp_path, bad, suffix):
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    key = next(k for k in state if k.startswith("decoder.") and k.endswith("weight"))
    state[key].view(-1)[3] = bad
    path = tmp_path / f"bad{suffix}"
    if suffix == ".pth":
        torch.save({"model": state, "model_config": tiny.config.to_dict()}, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={"upocr_config": tiny.config.to_json()})
    with pytest.raises(CheckpointError, match=rf"^{path}: {re.escape(key)} has NaN/Inf values$"):
        upocr.load_model(path)


def test_invalid_config_json_names_the_file(tiny, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "badjson.safetensors"
    save_file(dict(tiny.state_dict()), str(path), metadata={"upocr_config": "{'embed_dim': 16}"})
    with pytest.raises(CheckpointError, match=r"badjson\.safetensors: invalid model config in the safetensors metadata .*Expecting property name"):
        upocr.load_model(path)
    tiny.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"m/config\.json: invalid model config in config\.json \(expected a JSON object, found list\)"):
        upocr.load_model(tmp_path / "m")


def test_unknown_config_key_names_the_file(tiny, tmp_path):
    path = save_with_config(tiny, tmp_path / "bogus.safetensors", bogus_field=1)
    with pytest.raises(CheckpointError, match=r"bogus\.safetensors: invalid model config .*unknown model config keys: bogus_field"):
        upocr.load_model(path)
    torch.save({"model": dict(tiny.state_dict()), "model_config": {**tiny.config.to_dict(), "bogus_field": 1}}, tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match=r"t\.pt: invalid model config in the checkpoint .*bogus_field"):
        upocr.load_model(tmp_path / "t.pt")


def test_allocation_failure_names_the_file(tiny, tmp_path, monkeypatch):
    tiny.save_pretrained(tmp_path / "m")

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory\nmore")

    monkeypatch.setattr(torch.nn.Module, "load_state_dict", out_of_memory)
    with pytest.raises(CheckpointError, match=r"m: cannot build the model its config describes \(.*can't allocate memory\)$"):
        upocr.load_model(tmp_path / "m")


def test_files_torch_did_not_write_are_called_so(tmp_path):
    (tmp_path / "notes.pth").write_text("some notes\nnot weights\n")
    with pytest.raises(CheckpointError, match=r"notes\.pth: not a PyTorch checkpoint"):
        upocr.load_model(tmp_path / "notes.pth")
    (tmp_path / "plain.pth").write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's 2-line pickle-protocol UserWarning must not appear
        with pytest.raises(CheckpointError, match=r"plain\.pth: a plain pickle, not a PyTorch checkpoint"):
            upocr.load_model(tmp_path / "plain.pth")


def test_pickle_protocol_the_safe_loader_cannot_read(tiny, tmp_path):
    path = tmp_path / "p4.pth"
    torch.save(tiny.state_dict(), path, pickle_protocol=4, _use_new_zipfile_serialization=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError, match=r"p4\.pth: pickled with an instruction the safe loader cannot read"):
            upocr.load_model(path)


def test_loading_weights_does_not_import_the_compiler():
    """Building the shape-only network skips in-place initialisation of meta tensors; run, it went through a
    Python meta kernel whose first call imports torch._dynamo (1.5 s of every command's start-up)."""
    import subprocess
    import sys

    code = "import sys, upocr; upocr.load_model(); print('torch._dynamo' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "False"
