"""Loss terms on tiny tensors, the VGG16 loader, and the lr schedule against the original's formula."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import pytest

from upocr.tasks import IGNORE_VALUE, Task, encode_segmentation_target
from upocr.train.config import TrainConfig
from upocr.train.losses import (
    build_task_losses,
    gram_matrix,
    ignore_masked_regression_loss,
    msr_loss,
    perceptual_style_losses,
    real_vs_tampered_loss,
    resize_nearest,
    task_loss,
)
from upocr.train.schedule import LRSchedule
from upocr.train.vgg import TORCHVISION_TO_STAGE, VGG16Features, load_vgg16


def _outputs(batch: int, size: int, value: float | None = None, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(batch, 3, size // 4, size // 4), (batch, 3, size // 2, size // 2), (batch, 3, size, size)]
    if value is not None:
        return [torch.full(s, value) for s in shapes]
    return [torch.rand(s, generator=generator) for s in shapes]


def test_resize_nearest_equals_the_originals_scale_factor_form():
    x = torch.rand(2, 3, 32, 32)
    for scale, size in ((0.25, 8), (0.5, 16)):
        original = F.interpolate(x, scale_factor=scale, recompute_scale_factor=True)
        assert torch.equal(resize_nearest(x, (size, size)), original)


def test_msr_weights_text_and_background_separately():
    # Output 0 everywhere, target 1 everywhere; the left half of the image is text (mask 0).
    size = 16
    outputs = _outputs(1, size, value=0.0)
    target = torch.ones(1, 3, size, size)
    mask = torch.ones(1, 1, size, size)
    mask[..., : size // 2] = 0
    # Each L1 is a mean over all elements: half the elements differ by 1 in each region -> 0.5.
    expected = sum(0.5 * w_text + 0.5 * w_non for w_text, w_non in ((5, 0.8), (6, 1), (10, 2)))
    assert msr_loss(outputs, target, mask).item() == pytest.approx(expected)
    # All text: only the text weights count, with the full mean.
    assert msr_loss(outputs, target, torch.zeros_like(mask)).item() == pytest.approx(5 + 6 + 10)
    # Perfect prediction -> 0.
    perfect = [resize_nearest(target, o.shape[-2:]) for o in outputs]
    assert msr_loss(perfect, target, mask).item() == 0.0


def test_regression_loss_ignores_the_grey_value_elementwise():
    size = 16
    label = torch.zeros(size, size, dtype=torch.uint8)
    label[4:8, 4:12] = 1
    target = encode_segmentation_target(label)[None]
    outputs = _outputs(1, size, seed=3)
    base = ignore_masked_regression_loss(outputs, target).item()
    # Marking pixels ignored and changing the outputs there leaves the loss as computed on the rest.
    ignored = target.clone()
    ignored[..., :4, :] = IGNORE_VALUE
    changed = [o.clone() for o in outputs]
    for o in changed:
        o[..., : o.shape[-2] // 4, :] = 100.0
    a = ignore_masked_regression_loss(outputs, ignored).item()
    b = ignore_masked_regression_loss(changed, ignored).item()
    assert a == pytest.approx(b)
    assert a != pytest.approx(base)
    # By hand: constant output 0.5 against 0/1 targets -> smooth-L1 0.125 everywhere; weights sum 21.
    half = _outputs(1, size, value=0.5)
    assert ignore_masked_regression_loss(half, target).item() == pytest.approx(0.125 * 21)
    # Everything ignored: 0, not NaN.
    all_ignored = torch.full_like(target, IGNORE_VALUE)
    assert ignore_masked_regression_loss(outputs, all_ignored).item() == 0.0


def test_gram_matrix_is_float32_and_normalised():
    f = torch.ones(2, 4, 3, 5, dtype=torch.bfloat16)
    g = gram_matrix(f)
    assert g.dtype == torch.float32 and g.shape == (2, 4, 4)
    assert torch.allclose(g, torch.full((2, 4, 4), 15 / (4 * 15)))


def test_perceptual_and_style_vanish_only_for_a_perfect_prediction():
    torch.manual_seed(0)
    vgg = VGG16Features()
    image, target = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    mask = torch.ones(1, 1, 32, 32)
    mask[..., 8:16, 8:24] = 0
    comp_perfect = mask * image + (1 - mask) * target  # composite equals target only if image == target outside text
    perceptual, style = perceptual_style_losses(vgg, target.clone(), target, target, mask)
    assert perceptual.item() == 0.0 and style.item() == 0.0
    perceptual, style = perceptual_style_losses(vgg, image, comp_perfect, target, mask)
    assert perceptual.item() > 0 and style.item() > 0
    # Gradients reach the output through the frozen VGG, not the VGG itself.
    output = torch.rand(1, 3, 32, 32, requires_grad=True)
    sum(perceptual_style_losses(vgg, output, image, target, mask)).backward()
    assert output.grad is not None and output.grad.abs().sum() > 0
    assert all(p.grad is None for p in vgg.parameters())


def _batch(tasks: list[Task], size: int = 32, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    n = len(tasks)
    target = torch.rand(n, 3, size, size, generator=generator)
    for i, task in enumerate(tasks):
        if task is not Task.TEXT_REMOVAL:
            target[i] = (target[i] > 0.5).float()
            target[i, :, :2] = IGNORE_VALUE
    mask = (torch.rand(n, 1, size, size, generator=generator) > 0.3).float()
    return {"image": torch.rand(n, 3, size, size, generator=generator), "target": target, "mask": mask,
            "task": torch.tensor([int(t) for t in tasks])}  # fmt: skip


def _select(batch: dict, outputs: list[torch.Tensor], rows: list[int]) -> tuple[list[torch.Tensor], dict]:
    index = torch.tensor(rows)
    return [o[index] for o in outputs], {k: v[index] for k, v in batch.items()}


def test_task_loss_applies_each_images_task_and_sums_the_tasks():
    tasks = [Task.TEXT_REMOVAL, Task.TEXT_REMOVAL, Task.TAMPERED_TEXT_DETECTION, Task.TEXT_SEGMENTATION, Task.TEXT_SEGMENTATION]
    batch = _batch(tasks)
    outputs = _outputs(len(tasks), 32, seed=1)
    vgg = VGG16Features()
    terms = task_loss(outputs, batch, vgg=vgg)
    removal = task_loss(*_select(batch, outputs, [0, 1]), vgg=vgg)
    tampering = task_loss(*_select(batch, outputs, [2]))
    segmentation = task_loss(*_select(batch, outputs, [3, 4]))
    assert terms["removal"].item() == pytest.approx(removal["loss"].item(), rel=1e-5)
    assert terms["tampering"].item() == pytest.approx(tampering["loss"].item(), rel=1e-6)
    assert terms["segmentation"].item() == pytest.approx(segmentation["loss"].item(), rel=1e-6)
    assert terms["loss"].item() == pytest.approx(sum(terms[k].item() for k in ("removal", "tampering", "segmentation")), rel=1e-6)
    expected_removal = terms["removal_msr"] + 0.01 * terms["removal_perceptual"] + 120 * terms["removal_style"]
    assert terms["removal"].item() == pytest.approx(expected_removal.item(), rel=1e-6)
    assert terms["removal_perceptual"].item() > 0
    # Without a VGG the perceptual and style terms are off.
    no_vgg = task_loss(outputs, batch)
    assert no_vgg["removal_perceptual"].item() == 0 and no_vgg["removal"].item() == pytest.approx(terms["removal_msr"].item())
    # Task terms are means over that task's images: the same value whatever else is in the batch.
    assert terms["segmentation"].item() == pytest.approx(task_loss(*_select(batch, outputs, [3, 4, 2]))["segmentation"].item())


def _tampering_target(size: int, real_rows: int, tampered_rows: int) -> torch.Tensor:
    """One-hot (1, 3, size, size): real text in the first `real_rows` rows, tampered text in the next
    `tampered_rows`, background below."""
    classes = torch.zeros(size, size, dtype=torch.long)
    classes[:real_rows] = 1
    classes[real_rows:real_rows + tampered_rows] = 2
    return F.one_hot(classes, 3).permute(2, 0, 1)[None].float()


def _tampering_outputs(size: int, blue_minus_green_real: float, blue_minus_green_tampered: float, rows: tuple[int, int]):
    outputs = []
    for scale in (4, 2, 1):
        s = size // scale
        out = torch.full((1, 3, s, s), 0.5)
        real_end, tampered_end = rows[0] // scale, (rows[0] + rows[1]) // scale
        out[0, 2, :real_end] += blue_minus_green_real
        out[0, 2, real_end:tampered_end] += blue_minus_green_tampered
        out[0, 0] = 0.9  # background channel: must not matter
        outputs.append(out)
    return outputs


def test_real_vs_tampered_loss_rewards_separation_and_weighs_both_classes_equally():
    size, rows = 16, (8, 4)
    target = _tampering_target(size, *rows)
    separated = real_vs_tampered_loss(_tampering_outputs(size, -0.5, 0.5, rows), target)
    hedged = real_vs_tampered_loss(_tampering_outputs(size, 0.0, 0.0, rows), target)
    swapped = real_vs_tampered_loss(_tampering_outputs(size, 0.5, -0.5, rows), target)
    assert separated < hedged < swapped
    # Hedging costs BCE(logit 0) = ln 2 per class and scale: 21 ln 2, whatever the share of each class.
    assert hedged.item() == pytest.approx(21 * math.log(2), rel=1e-5)
    more_real = _tampering_target(size, 12, 4)
    assert real_vs_tampered_loss(_tampering_outputs(size, 0.0, 0.0, (12, 4)), more_real).item() == pytest.approx(hedged.item())
    # No text: nothing to separate.
    assert real_vs_tampered_loss(_tampering_outputs(size, 0.3, 0.3, rows), _tampering_target(size, 0, 0)).item() == 0


def test_tampering_text_weight_adds_to_the_tampering_term_only():
    tasks = [Task.TAMPERED_TEXT_DETECTION, Task.TEXT_SEGMENTATION]
    batch = _batch(tasks)
    outputs = _outputs(len(tasks), 32, seed=2)
    plain = task_loss(outputs, batch)
    weighted = task_loss(outputs, batch, losses=build_task_losses(TrainConfig(tampering_text_weight=0.5)))
    extra = 0.5 * real_vs_tampered_loss([o[:1] for o in outputs], batch["target"][:1])
    assert extra.item() > 0
    assert weighted["tampering"].item() == pytest.approx(plain["tampering"].item() + extra.item(), rel=1e-6)
    assert weighted["segmentation"].item() == plain["segmentation"].item()


def test_task_loss_backpropagates_under_bf16_autocast():
    batch = _batch([Task.TEXT_REMOVAL, Task.TEXT_SEGMENTATION])
    outputs = [o.requires_grad_() for o in _outputs(2, 32, seed=2)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = task_loss([o * 1.0 for o in outputs], batch, vgg=VGG16Features())
    assert terms["loss"].dtype == torch.float32 and torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert all(o.grad is not None and o.grad.abs().sum() > 0 for o in outputs)


def test_vgg_loads_torchvision_and_original_checkpoint_layouts(tmp_path):
    torch.manual_seed(0)
    reference = VGG16Features()
    ours = reference.state_dict()
    stage_to_index = {v: k for k, v in TORCHVISION_TO_STAGE.items()}
    torchvision_style = {}
    for key, value in ours.items():
        stage, param = key.rsplit(".", 1)
        torchvision_style[f"features.{stage_to_index[stage]}.{param}"] = value
    torchvision_style["classifier.0.weight"] = torch.zeros(4, 4)  # ignored
    torch.save(torchvision_style, tmp_path / "vgg16.pth")
    original_style = {"model": {**{f"vgg16.{k}": v for k, v in ours.items()}, "proj.weight": torch.zeros(2, 2)}, "epoch": 3}
    torch.save(original_style, tmp_path / "upocr.pth")
    x = torch.rand(1, 3, 32, 32)
    expected = reference(x)
    for name in ("vgg16.pth", "upocr.pth"):
        loaded = load_vgg16(tmp_path / name)
        assert all(not p.requires_grad for p in loaded.parameters())
        loaded.train()
        assert not loaded.training
        for a, b in zip(loaded(x), expected):
            assert torch.equal(a, b)
    assert [f.shape[1:] for f in expected] == [(64, 16, 16), (128, 8, 8), (256, 4, 4)]
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="partial.pth: no VGG16 weights"):
        load_vgg16(tmp_path / "partial.pth")


def test_schedule_defaults_reproduce_the_original_per_epoch_values():
    schedule = LRSchedule(total_steps=80_000)
    lr = 5e-4

    def at_epoch(epoch: int) -> float:
        return lr * schedule.factor(epoch * 200 + 137)  # any step inside the epoch

    for epoch in range(10):
        assert at_epoch(epoch) == pytest.approx(1e-4 + (5e-4 - 1e-4) * epoch / 10)
    for k in range(390):
        assert at_epoch(10 + k) == pytest.approx(max((389 - k) * 5e-4 / 400, 1e-5))
    assert at_epoch(10) == pytest.approx(4.8625e-4)
    assert at_epoch(391) == pytest.approx(1e-5) and at_epoch(399) == pytest.approx(1e-5)
    # Per-step variant of a short run: warm-up rises, then decays to the floor.
    short = LRSchedule(total_steps=100, epoch_steps=1, warmup_fraction=0.1)
    factors = [short.factor(s) for s in range(100)]
    assert factors[0] == pytest.approx(0.2) and max(factors) <= 1.0
    assert factors[10] > factors[50] > factors[99] >= 0.02
    cosine = LRSchedule(total_steps=100, epoch_steps=1, warmup_fraction=0.1, decay="cosine")
    assert cosine.factor(10) == pytest.approx(1.0) and cosine.factor(99) == pytest.approx(0.02, abs=1e-3)
