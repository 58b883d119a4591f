"""FID: the FID Inception-v3 (pytorch-fid's names and blocks), weights loading, features, distance, CLI.

No real weights exist offline, so the network gets seeded random weights with a variance-preserving
init (features of order 1); what is checked is structure, loading, the pipeline and the distance.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import linalg

from upocr.cli import main
from upocr.evaluate.fid import (
    activation_statistics,
    fid_activations,
    fid_for_folders,
    fid_from_activations,
    frechet_distance,
    pytorch_fid_file_list,
)
from upocr.evaluate.inception import (
    FIDInceptionV3,
    FIDWeightsError,
    InceptionA,
    InceptionC,
    InceptionE,
    expected_state_keys,
    load_fid_inception,
)

# ---------------------------------------------------------------- the expected pytorch-fid key list

# Convolution units (each conv.weight + bn.{weight,bias,running_mean,running_var}) of torchvision's
# Inception3 blocks, which pytorch-fid's fid_inception_v3() keeps (its FID blocks only change forward()).
_STEM = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
_UNITS = {
    "A": ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3", "branch_pool"],
    "B": ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"],
    "C": ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2",
          "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"],
    "D": ["branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"],
    "E": ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
          "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"],
}
_BLOCKS = {"Mixed_5b": "A", "Mixed_5c": "A", "Mixed_5d": "A", "Mixed_6a": "B", "Mixed_6b": "C", "Mixed_6c": "C",
           "Mixed_6d": "C", "Mixed_6e": "C", "Mixed_7a": "D", "Mixed_7b": "E", "Mixed_7c": "E"}
_UNIT_KEYS = ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]


def pytorch_fid_keys() -> set[str]:
    units = _STEM + [f"{block}.{unit}" for block, kind in _BLOCKS.items() for unit in _UNITS[kind]]
    return {f"{unit}.{key}" for unit in units for key in _UNIT_KEYS} | {"fc.weight", "fc.bias"}


def test_state_dict_keys_are_pytorch_fids():
    expected = pytorch_fid_keys()
    assert len(expected) == 94 * 5 + 2
    keys = expected_state_keys()
    assert set(keys) == expected
    # The real state dict additionally has BatchNorm counters (optional when loading).
    with_counters = set(expected_state_keys(with_batch_counters=True))
    assert with_counters - expected == {k.replace("running_var", "num_batches_tracked") for k in expected if k.endswith("running_var")}
    counts = {block: sum(k.startswith(block + ".") for k in keys) for block in _BLOCKS}
    assert counts == {"Mixed_5b": 35, "Mixed_5c": 35, "Mixed_5d": 35, "Mixed_6a": 20, "Mixed_6b": 50, "Mixed_6c": 50,
                      "Mixed_6d": 50, "Mixed_6e": 50, "Mixed_7a": 30, "Mixed_7b": 45, "Mixed_7c": 45}
    assert keys["fc.weight"] == (1008, 2048) and keys["fc.bias"] == (1008,)
    assert keys["Mixed_7c.branch3x3dbl_3b.bn.running_var"] == (384,)
    assert keys["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert keys["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert keys["Mixed_5c.branch_pool.conv.weight"] == (64, 256, 1, 1)
    assert keys["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert keys["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert keys["Mixed_7b.branch1x1.conv.weight"] == (320, 1280, 1, 1)
    assert keys["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    with torch.device("meta"):
        network = FIDInceptionV3()
    assert all(m.eps == 0.001 for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert sum(p.numel() for p in network.parameters()) == 23_850_960


def _pool_branch_input(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the block fed its branch_pool conv (recorded with a hook)."""
    seen = []
    handle = block.branch_pool.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    block.eval()(x)
    handle.remove()
    return seen[0]


def test_fid_blocks_pool_like_tensorflow():
    torch.manual_seed(0)
    x = torch.rand(1, 192, 5, 5) + 1
    pooled_a = _pool_branch_input(InceptionA(192, pool_features=32), x)
    # TF's average leaves padded zeros out: a corner averages its 4 neighbours, not 4/9 of them.
    assert torch.allclose(pooled_a[0, :, 0, 0], x[0, :, :2, :2].mean(dim=(1, 2)))
    assert torch.allclose(pooled_a, F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
    x = torch.rand(1, 768, 4, 4)
    assert torch.allclose(_pool_branch_input(InceptionC(768, channels_7x7=128), x), F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
    x = torch.rand(1, 2048, 4, 4)
    assert torch.equal(_pool_branch_input(InceptionE(2048, pool="max"), x), F.max_pool2d(x, 3, 1, 1))  # Mixed_7c
    assert torch.allclose(_pool_branch_input(InceptionE(2048, pool="avg"), x), F.avg_pool2d(x, 3, 1, 1, count_include_pad=False))
    with torch.device("meta"):
        network = FIDInceptionV3()
    assert network.Mixed_7b.pool == "avg" and network.Mixed_7c.pool == "max"


# ---------------------------------------------------------------- weights, features


def _random_network(seed: int = 0) -> FIDInceptionV3:
    """Seeded weights whose activations stay of order 1 through the 94 conv layers."""
    torch.manual_seed(seed)
    network = FIDInceptionV3()
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.8, 1.2)
    return network.eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(_random_network().state_dict(), path)
    return path


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _images(seed: int, count: int, size=(40, 56)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


def test_loaded_weights_give_2048_features_of_each_image(weights, tmp_path):
    network = load_fid_inception(weights)
    reference = _random_network()
    assert not network.training
    for key, tensor in reference.state_dict().items():
        assert torch.equal(network.state_dict()[key], tensor), key
    paths = [_save(tmp_path / f"{i}.png", image) for i, image in enumerate(_images(1, 2))]
    features, errors = fid_activations(network, paths, progress=False)
    assert errors == [] and features.shape == (2, 2048) and features.dtype == np.float64
    assert np.isfinite(features).all() and features.min() >= 0  # pool3 of ReLU maps
    assert np.abs(features[0] - features[1]).max() > 1e-3  # different images, different features
    # pytorch-fid's path: ToTensor then the network resizes the batch to 299 bilinearly.
    pixels = torch.from_numpy(np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        direct = reference(pixels).double().numpy()
    np.testing.assert_allclose(features, direct, rtol=1e-4, atol=1e-6)


def test_weights_without_batch_counters_load(weights, tmp_path):
    state = torch.load(weights, weights_only=True)
    path = tmp_path / "old.pth"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    network = load_fid_inception(path)
    assert torch.equal(network.Mixed_7c.branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])


def _one_line_error(path: Path) -> str:
    with pytest.raises(FIDWeightsError) as caught:
        load_fid_inception(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


def test_bad_weights_files_give_one_line_errors(weights, tmp_path):
    data = weights.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    assert "not a readable checkpoint (truncated" in _one_line_error(truncated)
    state = torch.load(weights, weights_only=True)

    renamed = dict(state)
    renamed["Mixed_7c.branch_pool.conv.kernel"] = renamed.pop("Mixed_7c.branch_pool.conv.weight")
    torch.save(renamed, tmp_path / "renamed.pth")
    message = _one_line_error(tmp_path / "renamed.pth")
    assert "1 missing (e.g. Mixed_7c.branch_pool.conv.weight)" in message and "1 unexpected" in message

    torch.save({**state, "fc.weight": torch.zeros(1000, 2048)}, tmp_path / "classes.pth")
    assert "fc.weight has shape (1000, 2048), expected (1008, 2048)" in _one_line_error(tmp_path / "classes.pth")

    torch.save({"model": Path("x")}, tmp_path / "pickle.pth")  # a pickled object, not tensors: never unpickled
    assert "refuses to unpickle pathlib" in _one_line_error(tmp_path / "pickle.pth")
    with pytest.raises(FileNotFoundError):
        load_fid_inception(tmp_path / "absent.pth")


# ---------------------------------------------------------------- distance


def test_subspace_fid_equals_pytorch_fids_full_sqrtm():
    rng = np.random.default_rng(0)
    for n1, n2 in ((2, 3), (10, 14), (70, 90)):  # rank-deficient, and more samples than dims (64)
        act1 = np.maximum(rng.normal(size=(n1, 64)), 0)
        act2 = np.maximum(rng.normal(0.2, 1.2, size=(n2, 64)), 0)
        full = frechet_distance(*activation_statistics(act1), *activation_statistics(act2))
        assert fid_from_activations(act1, act2) == pytest.approx(full, rel=1e-6, abs=1e-6)
        assert fid_from_activations(act1, act1) == pytest.approx(0, abs=1e-6)


def test_singular_product_takes_pytorch_fids_eps_offset():
    # sqrtm([[0, 1], [0, 0]]) is not finite; pytorch-fid then adds eps*I to both covariances:
    # tr sqrt((1 + eps) [[eps, 1], [0, eps]]) = 2 sqrt(eps (1 + eps)).
    eps = 1e-4
    value = frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.array([[0.0, 1.0], [0.0, 0.0]]), eps=eps)
    assert value == pytest.approx(2 - 4 * np.sqrt(eps * (1 + eps)), rel=1e-9)


class _SqrtmFailingOnSingular:
    """scipy.linalg stand-in whose sqrtm fails (NaN) on each first try, as older scipy versions do on
    singular products, so both FID routes take the eps-offset path."""

    LinAlgWarning = linalg.LinAlgWarning

    def __init__(self) -> None:
        self.calls = 0

    def sqrtm(self, matrix: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.full_like(matrix, np.nan) if self.calls % 2 else linalg.sqrtm(matrix)


def test_subspace_fid_follows_the_eps_offset_outside_the_span(monkeypatch):
    import upocr.evaluate.fid as fid_module

    rng = np.random.default_rng(1)
    act1, act2 = np.maximum(rng.normal(size=(2, 64)), 0), np.maximum(rng.normal(size=(3, 64)), 0)
    eps = 1e-2  # large, so the 59 directions outside the features' span weigh 2 * 59 * eps = 1.18
    monkeypatch.setattr(fid_module, "linalg", _SqrtmFailingOnSingular())
    full = frechet_distance(*activation_statistics(act1), *activation_statistics(act2), eps=eps)
    assert fid_module.linalg.calls == 2
    assert fid_from_activations(act1, act2, eps=eps) == pytest.approx(full, rel=1e-9)
    assert fid_module.linalg.calls == 4


def test_fid_of_a_folder_against_its_copy_is_zero_and_against_others_not(weights, tmp_path):
    for i, image in enumerate(_images(2, 2)):
        _save(tmp_path / "a" / f"{i}.png", image)
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    _save(tmp_path / "b" / "0.png", np.full((40, 56, 3), 30, np.uint8))
    _save(tmp_path / "b" / "1.jpg", np.full((60, 60, 3), 220, np.uint8))
    same = fid_for_folders(tmp_path / "a", tmp_path / "copy", weights=weights, progress=False)
    assert same["fid_missing"] is None and same["fid_images"] == {"gt": 2, "pred": 2}
    assert abs(same["fid"]) < 1e-6
    different = fid_for_folders(tmp_path / "a", tmp_path / "b", weights=weights, progress=False)
    assert different["fid"] > 1.0


def test_unreadable_files_are_left_out_and_too_few_images_reported(weights, tmp_path):
    for i, image in enumerate(_images(3, 2)):
        _save(tmp_path / "gt" / f"{i}.png", image)
    _save(tmp_path / "pred" / "0.png", _images(4, 1)[0])
    (tmp_path / "pred" / "1.png").write_bytes(b"not a png")
    (tmp_path / "pred" / "notes.txt").write_text("ignored")
    _save(tmp_path / "pred" / "deeper" / "2.png", _images(5, 1)[0])  # pytorch-fid does not recurse
    assert [p.name for p in pytorch_fid_file_list(tmp_path / "pred")] == ["0.png", "1.png"]
    result = fid_for_folders(tmp_path / "gt", tmp_path / "pred", weights=weights, progress=False)
    assert result["fid"] is None and "has 1 readable image" in result["fid_missing"]
    assert len(result["fid_errors"]) == 1 and result["fid_errors"][0].startswith(str(tmp_path / "pred" / "1.png"))


# ---------------------------------------------------------------- CLI


def test_evaluate_removal_cli_reports_fid_with_weights(weights, tmp_path, capsys):
    gts = _images(6, 2, size=(48, 48))
    for i, gt in enumerate(gts):
        _save(tmp_path / "gt" / f"img{i}.png", gt)
        _save(tmp_path / "pred" / f"img{i}.png", (gt // 2).astype(np.uint8))
    args = ["evaluate", "removal", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--quiet"]
    assert main([*args, "--fid-weights", str(weights), "--json", str(tmp_path / "r.json")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert isinstance(result["fid"], float) and result["fid"] > 0 and result["fid_missing"] is None
    table = capsys.readouterr().out
    assert f"{result['fid']:.2f}" in table and "FID: missing" not in table

    (tmp_path / "bad.pth").write_bytes(b"PK\x03\x04 truncated")
    assert main([*args, "--fid-weights", str(tmp_path / "bad.pth")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and str(tmp_path / "bad.pth") in errors[0]
