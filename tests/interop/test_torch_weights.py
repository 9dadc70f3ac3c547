"""Weight conversion between the PyTorch reference and Flax variables."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from mobilenet_jax import MobileNetV1
from mobilenet_jax.interop.torch_weights import flax_to_torch, infer_model, torch_to_flax
from mobilenet_jax.interop.torch_reference import random_reference


@pytest.mark.parametrize("kwargs", [dict(), dict(alpha=0.25, num_classes=7), dict(alpha=0.5, num_classes=0)])
def test_round_trip_torch_flax_torch_is_the_identity(kwargs):
    state = random_reference(seed=0, **kwargs).state_dict()
    back = flax_to_torch(torch_to_flax(state))
    assert back.keys() == state.keys()
    for key, tensor in state.items():
        assert back[key].dtype == tensor.dtype, key
        torch.testing.assert_close(back[key], tensor, rtol=0, atol=0, msg=key)


def test_layouts_follow_the_documented_transposes():
    state = random_reference(seed=0, alpha=0.25, num_classes=5).state_dict()
    variables = torch_to_flax(state)
    params, stats = variables["params"], variables["batch_stats"]
    np.testing.assert_array_equal(params["stem"]["conv"]["kernel"], state["stem.conv.weight"].numpy().transpose(2, 3, 1, 0))
    depthwise = params["block4"]["depthwise"]["conv"]["kernel"]
    assert depthwise.shape == (3, 3, 1, 32)
    np.testing.assert_array_equal(depthwise[1, 2, 0, 5], state["blocks.3.depthwise.conv.weight"][5, 0, 1, 2].item())
    np.testing.assert_array_equal(params["classifier"]["kernel"], state["classifier.weight"].numpy().T)
    np.testing.assert_array_equal(params["block2"]["pointwise"]["bn"]["scale"], state["blocks.1.pointwise.bn.weight"].numpy())
    np.testing.assert_array_equal(stats["block2"]["pointwise"]["bn"]["var"], state["blocks.1.pointwise.bn.running_var"].numpy())


def test_converted_variables_have_the_models_structure():
    model = MobileNetV1(alpha=0.75, num_classes=11)
    state = random_reference(seed=0, alpha=0.75, num_classes=11).state_dict()
    reference = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, 3), np.float32))
    converted = torch_to_flax(state)
    assert jax.tree.structure(converted) == jax.tree.structure(reference)
    assert jax.tree.map(np.shape, converted) == jax.tree.map(lambda a: a.shape, reference)
    assert (infer_model(state).alpha, infer_model(state).num_classes) == (0.75, 11)


def test_conversion_does_not_alias_torch_memory():
    model = random_reference(seed=0, alpha=0.25)
    variables = torch_to_flax(model.state_dict())
    before = variables["batch_stats"]["stem"]["bn"]["mean"].copy()
    with torch.no_grad():
        model.stem.bn.running_mean.add_(1.0)
    np.testing.assert_array_equal(variables["batch_stats"]["stem"]["bn"]["mean"], before)


def test_missing_key_is_named():
    state = random_reference(seed=0, alpha=0.25).state_dict()
    del state["blocks.4.pointwise.bn.running_var"]
    with pytest.raises(KeyError, match=r"missing 'blocks.4.pointwise.bn.running_var'.*block5/pointwise/bn/var"):
        torch_to_flax(state)


def test_extra_key_is_named():
    state = random_reference(seed=0, alpha=0.25).state_dict()
    state["head.extra.weight"] = torch.zeros(3)
    with pytest.raises(KeyError, match="head.extra.weight"):
        torch_to_flax(state)


def test_shape_mismatch_names_key_and_both_shapes():
    state = random_reference(seed=0, alpha=0.25, num_classes=10).state_dict()
    with pytest.raises(ValueError, match=r"'classifier.bias' has shape \(10,\).*needs \(1000,\)"):
        torch_to_flax(state, MobileNetV1(alpha=0.25, num_classes=1000))
    state["blocks.0.depthwise.conv.weight"] = torch.zeros(8, 1, 3)
    with pytest.raises(ValueError, match=r"'blocks.0.depthwise.conv.weight' has shape \(8, 1, 3\)"):
        torch_to_flax(state)
