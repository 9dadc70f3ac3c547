"""timm-layout MobileNet v1 weights written by torch -> Flax, against the torch module's logits."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

import timm_reference as ref  # noqa: E402
from logit_check import TOLERANCE, max_diff  # noqa: E402

from mobilenet_jax.interop import timm  # noqa: E402


def images(size: int) -> np.ndarray:
    """Two NHWC images in timm MobileNet v1's input range (mean = std = 0.5: [-1, 1])."""
    return np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)


def torch_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()


@pytest.mark.parametrize("multiplier, size", [(0.25, 128), (1.0, 160), (1.25, 224)])
def test_safetensors_file_matches_torch_logits(tmp_path, multiplier, size):
    model = ref.random_model(multiplier, seed=1)
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(model.state_dict(), str(path))
    converted = timm.from_timm(path)
    assert converted.fields == dict(timm.FIELDS, alpha=multiplier, num_classes=1000)
    x = images(size)
    assert max_diff(converted, x, torch_logits(model, x), f"timm multiplier {multiplier} size {size}") <= TOLERANCE


def test_pth_file_and_state_dict_without_classifier(tmp_path):
    model = ref.random_model(0.5, seed=2, num_classes=0)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    for source in (tmp_path / "model.pth", model.state_dict()):
        converted = timm.from_timm(source)
        assert converted.fields["num_classes"] == 0 and converted.fields["alpha"] == 0.5
    x = images(128)
    assert max_diff(converted, x, torch_logits(model, x), "timm multiplier 0.5 no classifier size 128") <= TOLERANCE


def test_head_conv_variant_and_other_widths_are_refused_by_name():
    state = ref.random_model(0.25, seed=3).state_dict()
    with_head = {**state, "conv_head.weight": torch.zeros(256, 256, 1, 1), "bn2.weight": torch.ones(256)}
    with pytest.raises(ValueError, match="conv_head.*mobilenetv1_100h"):
        timm.from_timm(with_head)
    # timm rounds 0.35 x 32 = 11.2 up to 16 channels; int(c * alpha) gives 11: not expressible.
    with pytest.raises(ValueError, match=r"'blocks.0.0.bn1.running_mean' is \(16,\).*needs \(11,\).*cannot express"):
        timm.from_timm(ref.random_model(0.35, seed=4).state_dict())
    missing = {k: v for k, v in state.items() if k != "blocks.3.2.conv_pw.weight"}
    with pytest.raises(KeyError, match="blocks.3.2.conv_pw.weight"):
        timm.from_timm(missing)
    with pytest.raises(KeyError, match="does not use: \\['blocks.0.0.se.fc.weight'\\]"):
        timm.from_timm({**state, "blocks.0.0.se.fc.weight": torch.zeros(1)})
