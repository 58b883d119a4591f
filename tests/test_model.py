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


def _extended(config: str = "tiny") -> UPOCRConfig:
    import dataclasses

    return dataclasses.replace(UPOCRConfig.preset(config), image_skip=True, removal_residual=True)


def test_image_skip_starts_neutral_and_removal_is_input_plus_change():
    torch.manual_seed(0)
    original = build_model("tiny").eval()
    extended = build_model(_extended()).eval()
    missing, unexpected = extended.load_state_dict(original.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith(extended.NEUTRAL_ADDITIONS) for k in missing)
    images = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        before, after = original(images, [0, 1, 2]), extended(images, [0, 1, 2])
    for scale, (b, a) in enumerate(zip(before, after)):
        # Zero-initialised fusions: tampering and segmentation rows are unchanged ...
        torch.testing.assert_close(a[1:], b[1:], atol=1e-6, rtol=0)
        # ... and removal is the old output plus the input at that scale (avg-pooled 4x, 2x, 1x).
        passthrough = torch.nn.functional.avg_pool2d(images[:1], 4 // 2**scale)
        torch.testing.assert_close(a[:1], b[:1] + passthrough, atol=1e-6, rtol=0)


def test_image_skip_gets_gradient_and_needs_the_image():
    torch.manual_seed(0)
    model = build_model(_extended()).train()
    for fusion in model.decoder.image_fusions:
        torch.nn.init.normal_(fusion.fuse[-1].weight, std=0.1)  # as after some training
    outputs = model(torch.rand(2, 3, 64, 64), [1, 2])
    sum(o.square().mean() for o in outputs).backward()
    # Every parameter outside the zero-initialised block norms gets a gradient, the fusions included.
    no_grad = [n for n, p in model.named_parameters() if p.grad is None and ".blocks." not in n]
    assert no_grad == [] and all(p.grad.abs().sum() > 0 for p in model.decoder.image_fusions.parameters())
    with pytest.raises(ValueError, match="pass image="):
        model.decoder(torch.zeros(1, 4, 128), 2, 2, [torch.zeros(1, 1, 1, 1)] * 4)


def test_extended_small_config_counts():
    small, extended = build_model("small"), build_model(_extended("small"))
    added = extended.num_parameters - small.num_parameters
    assert added == sum(p.numel() for p in extended.decoder.image_fusions.parameters()) and 0 < added < 20_000
