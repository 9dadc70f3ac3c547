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


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("shape", [(64, 64), (64, 96)])
def test_dilated_timm_network_equals_the_atrous_model_on_the_same_weights(tmp_path, output_stride, shape):
    import jax

    model = ref.random_model(0.5, seed=4, output_stride=output_stride)
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(model.state_dict(), str(path))
    converted = timm.from_timm(path)
    atrous = converted.model().clone(output_stride=output_stride)
    x = np.random.default_rng(5).uniform(-1, 1, (2, *shape, 3)).astype(np.float32)
    logits, endpoints = jax.jit(lambda v, x: atrous.apply(v, x, return_endpoints=True))(converted.variables, x)
    with torch.no_grad():
        nchw = torch.from_numpy(x.transpose(0, 3, 1, 2))
        expected, features = model(nchw).numpy(), model.features(nchw).numpy().transpose(0, 2, 3, 1)
    deepest = np.asarray(endpoints[f"stride_{output_stride}"])
    assert deepest.shape == features.shape == (2, shape[0] // output_stride, shape[1] // output_stride, 512)
    assert np.abs(logits - expected).max() <= TOLERANCE
    assert np.abs(deepest - features).max() <= TOLERANCE


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
    with pytest.raises(ValueError, match="the state dict is not a timm MobileNet v1 state dict: 1 of its keys are no "
                                         "layer of one \\('blocks.0.0.se.fc.weight'\\)"):
        timm.from_timm({**state, "blocks.0.0.se.fc.weight": torch.zeros(1)})


def mobilenet_v2_state(width: int = 8) -> dict[str, "torch.Tensor"]:
    """A state dict laid out as timm's mobilenetv2_050: a stem, a depthwise-separable block,
    inverted residual blocks (conv_pw, conv_dw, conv_pwl, bn1-3), a 1x1 head conv and its bn2."""

    def bn(name: str, channels: int) -> dict[str, "torch.Tensor"]:
        return {f"{name}.{v}": torch.ones(channels) for v in ("weight", "bias", "running_mean", "running_var")}

    state = {"conv_stem.weight": torch.zeros(width, 3, 3, 3), **bn("bn1", width)}
    state.update({"blocks.0.0.conv_dw.weight": torch.zeros(width, 1, 3, 3), **bn("blocks.0.0.bn1", width),
                  "blocks.0.0.conv_pw.weight": torch.zeros(width, width, 1, 1), **bn("blocks.0.0.bn2", width)})
    for stage, blocks in enumerate((2, 3, 4, 3, 3, 1), start=1):
        for b in range(blocks):
            prefix = f"blocks.{stage}.{b}"
            state.update({f"{prefix}.conv_pw.weight": torch.zeros(6 * width, width, 1, 1), **bn(f"{prefix}.bn1", 6 * width),
                          f"{prefix}.conv_dw.weight": torch.zeros(6 * width, 1, 3, 3), **bn(f"{prefix}.bn2", 6 * width),
                          f"{prefix}.conv_pwl.weight": torch.zeros(width, 6 * width, 1, 1), **bn(f"{prefix}.bn3", width)})
    state.update({"conv_head.weight": torch.zeros(1280, width, 1, 1), **bn("bn2", 1280),
                  "classifier.weight": torch.zeros(1000, 1280), "classifier.bias": torch.zeros(1000)})
    return state


def test_another_timm_model_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "mobilenetv2_050.safetensors"
    safetensors_torch.save_file(mobilenet_v2_state(), str(path))
    with pytest.raises(ValueError) as error:
        timm.from_timm(path)
    message = str(error.value)
    assert message.startswith(f"{path} is not a timm MobileNet v1 state dict: ") and "mobilenetv1_100h" not in message
    assert "pass timm mobilenetv1_100 or mobilenetv1_125 weights" in message


def test_a_file_of_another_format_is_named(tmp_path):
    for name in ("model.safetensors", "model.pth"):
        (tmp_path / name).write_text("not weights")
        with pytest.raises(ValueError, match=f"{tmp_path / name} is not a readable"):
            timm.from_timm(tmp_path / name)


def test_the_safetensors_header_gives_the_shapes_the_library_reads(tmp_path):
    from safetensors import safe_open
    from timm_state import write_safetensors

    path = write_safetensors(str(tmp_path / "model.safetensors"), 0.25)
    with safe_open(path, "numpy") as f:
        expected = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    assert timm.read_file(path, shapes_only=True) == expected
    for name, content in (("text", b"not weights"), ("list", (3).to_bytes(8, "little") + b"[1]"),
                          ("cut", (99).to_bytes(8, "little") + b'{"a": ')):
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(content)
        with pytest.raises(ValueError, match=f"{path} is not a readable .safetensors file"):
            timm.read_file(path, shapes_only=True)
