"""Shared tester: every model config runs on tiny inputs with the same checks."""

import pytest
import torch

from upocr import Task, UPOCRConfig, build_model
from upocr.model import PRESETS
from upocr.model.swinv2 import PatchSplit, channels_to_space, space_to_channels

# Presets cheap enough to run forward on CPU in a test; 'paper' is only counted (below).
FORWARD_CONFIGS = ["tiny", "mini", "small"]


@pytest.fixture(scope="module", params=FORWARD_CONFIGS)
def model(request):
    torch.manual_seed(0)
    return build_model(request.param).eval()


@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_forward_shapes_coarse_to_fine(model, size):
    h, w = size
    outputs = model(torch.rand(2, 3, h, w), "removal")
    assert [tuple(o.shape) for o in outputs] == [(2, 3, h // 4, w // 4), (2, 3, h // 2, w // 2), (2, 3, h, w)]
    assert all(torch.isfinite(o).all() for o in outputs)


def test_mixed_batch_equals_single_calls(model):
    images = torch.rand(1, 3, 64, 64).repeat(3, 1, 1, 1)
    with torch.no_grad():
        mixed = model(images, [Task.TEXT_REMOVAL, "tampering", 2])[-1]
        singles = [model(images[i : i + 1], task)[-1] for i, task in enumerate(Task)]
    for i in range(3):
        torch.testing.assert_close(mixed[i : i + 1], singles[i], atol=1e-4, rtol=0)  # batching changes float sums only
    # The prompt must matter: different tasks give different outputs for the same image.
    assert not torch.allclose(mixed[0], mixed[1])


def test_size_not_multiple_of_32_is_actionable(model):
    with pytest.raises(ValueError, match=r"input 50x70 is not a multiple of 32; pad or resize to 64x96"):
        model(torch.rand(1, 3, 50, 70), 0)


def test_task_count_must_match_batch(model):
    with pytest.raises(ValueError, match="2 tasks for a batch of 3"):
        model(torch.rand(3, 3, 64, 64), ["removal", "segmentation"])


def test_backward_reaches_every_parameter():
    torch.manual_seed(0)
    model = build_model("tiny").train()
    outputs = model(torch.rand(3, 3, 64, 64), [0, 1, 2])
    sum(o.square().mean() for o in outputs).backward()
    # Block norms start at zero (identity blocks), so their inner weights get no gradient on step one;
    # everything on the main path does.
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []


def test_paper_config_parameter_count():
    assert build_model("paper").num_parameters == 108_157_401


def test_presets_validate_and_round_trip():
    for name, config in PRESETS.items():
        assert UPOCRConfig.from_dict(config.to_dict()) == config, name
    with pytest.raises(ValueError, match="not divisible"):
        UPOCRConfig(embed_dim=32, encoder_heads=(3, 2, 4, 8))
    with pytest.raises(ValueError, match="unknown model config 'huge'"):
        UPOCRConfig.preset("huge")


def test_patch_split_arrangement_inverts_patch_merging():
    """PatchSplit puts channel group g of a token back at the sub-pixel PatchMerging took it from."""
    grid = torch.arange(2 * 4 * 6 * 5, dtype=torch.float32).view(2, 4, 6, 5)
    merged = space_to_channels(grid)
    assert merged.shape == (2, 2, 3, 20)
    assert torch.equal(merged[0, 0, 0, 5:10], grid[0, 1, 0])  # group 1 = (dy=1, dx=0)
    assert torch.equal(merged[0, 0, 0, 10:15], grid[0, 0, 1])  # group 2 = (dy=0, dx=1)
    assert torch.equal(channels_to_space(merged), grid)
    tokens = PatchSplit(20)(merged.flatten(1, 2), 2, 3)
    assert tokens.shape == (2, 4 * 6, 10)


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    model = build_model("tiny")
    x = torch.rand(1, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        a, b = model(x, 0)[-1], model(x, 0)[-1]
    assert torch.equal(a, b)
