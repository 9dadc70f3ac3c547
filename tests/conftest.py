"""Test session set-up: eight simulated CPU devices for the data-parallel tests.

The flag must be set before JAX initialises its backend; single-device code is unaffected.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
