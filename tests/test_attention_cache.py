"""The position-bias cache of WindowAttention: used at inference only, never stale, never in training."""

import torch

from upocr import build_model
from upocr.model.swinv2 import WindowAttention


def _attention() -> WindowAttention:
    torch.manual_seed(0)
    return WindowAttention(dim=16, heads=2, window=4, pretrained_window=4, cpb_hidden=8).eval()


def test_position_bias_is_computed_once_at_inference():
    attention = _attention()
    with torch.inference_mode():
        first = attention.position_bias()
        assert attention.position_bias() is first
    with torch.no_grad():
        assert attention.position_bias() is first
    torch.testing.assert_close(first, attention._compute_position_bias().detach(), rtol=0, atol=0)


def test_position_bias_follows_weight_changes():
    attention, other = _attention(), WindowAttention(dim=16, heads=2, window=4, pretrained_window=4, cpb_hidden=8)
    with torch.no_grad():
        before = attention.position_bias()
        attention.cpb_mlp[2].weight.mul_(-1)  # in place, as an optimizer step
        flipped = attention.position_bias()
        torch.testing.assert_close(flipped, 16 - before)  # sigmoid(-x) = 1 - sigmoid(x)
        attention.load_state_dict(other.state_dict())
        torch.testing.assert_close(attention.position_bias(), other.position_bias(), rtol=0, atol=0)


def test_training_recomputes_the_bias_with_gradient():
    attention = _attention()
    with torch.inference_mode():
        attention(torch.rand(2, 16, 16))  # fills the cache
    attention.train()
    attention(torch.rand(2, 16, 16)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in attention.cpb_mlp.parameters())


def test_model_outputs_follow_loaded_weights():
    torch.manual_seed(0)
    model, other = build_model("tiny").eval(), build_model("tiny").eval()
    for m in (model, other):  # non-zero block norms, so that attention (and its bias) shapes the output
        with torch.no_grad():
            for name, p in m.named_parameters():
                if ".norm" in name and p.ndim == 1:
                    p.copy_(torch.randn_like(p))
    images = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        model(images, "removal")  # caches model's biases
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(model(images, "removal")[-1], other(images, "removal")[-1], rtol=0, atol=0)
