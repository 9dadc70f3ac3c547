"""StableHLO export: serialized with a symbolic batch, reloaded and called at any batch size."""

import numpy as np
import pytest
from export_models import CONFIGS, FLOAT32_TOLERANCE, images, realistic_deployable

from mobilenet_jax.export import int8_inference_fn
from mobilenet_jax.export.check import fidelity, reference_logits
from mobilenet_jax.export.stablehlo import export_stablehlo, load_stablehlo


@pytest.fixture(scope="module", params=CONFIGS, ids=lambda c: f"{c[0]}-{c[1]}")
def exported(request, tmp_path_factory):
    deployable = realistic_deployable(*request.param)
    path = str(tmp_path_factory.mktemp("stablehlo") / "model.stablehlo")
    export_stablehlo(deployable, path)
    return deployable, load_stablehlo(path)


@pytest.mark.parametrize("batch", [1, 3])
def test_any_batch_size_matches_flax(exported, batch):
    deployable, call = exported
    x = images(deployable.image_size, batch)
    result = fidelity("stablehlo", "float32", reference_logits(deployable, x), np.asarray(call(x)), None)
    assert result.max_relative_diff <= FLOAT32_TOLERANCE


def test_int8_export_is_the_jax_int8_model(tmp_path):
    deployable = realistic_deployable(0.25, 64)
    calibration = [images(64, 4, seed=5)]
    path = str(tmp_path / "int8.stablehlo")
    export_stablehlo(deployable, path, kind="int8", calibration=calibration)
    x = images(64)
    expected = int8_inference_fn(deployable.model, deployable.variables, calibration)(x)
    # The same integer arithmetic; only the float rescaling may fuse differently (1 ulp).
    np.testing.assert_allclose(np.asarray(load_stablehlo(path)(x)), np.asarray(expected), rtol=1e-6, atol=1e-6)


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="StableHLO kind must be one of .* got 'float16'"):
        export_stablehlo(realistic_deployable(0.25, 64), kind="float16")
