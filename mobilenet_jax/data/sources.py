"""Datasets behind one protocol: TFDS by name, a folder of images, and the offline digits.

`open_source(spec)` opens a dataset once (metadata and file lists; an image folder also has each
image's header read and the image decoded once, to refuse or skip the ones training cannot use
before it starts) and returns a `Source`: its `DatasetInfo`, how its images are augmented, and a
function that hands each process its part of a split. The pipeline (`pipeline.py`) does the rest
the same way for all. Errors name the settings the user gave (`Settings`).

The protocol is in `protocol.py`; the sources in `tfds_source.py`, `folder.py` and `digits.py`.
"""

from __future__ import annotations

from mobilenet_jax.data.digits import digits_source
from mobilenet_jax.data.folder import folder_source
from mobilenet_jax.data.preprocess import keep_tensorflow_off_accelerators
from mobilenet_jax.data.protocol import Settings, Source
from mobilenet_jax.data.spec import DataSpec
from mobilenet_jax.data.tfds_source import tfds_source


def open_source(spec: DataSpec, settings: Settings = Settings()) -> Source:
    """The dataset of `spec`, opened and checked (TFDS and digits: metadata only; folders: every
    image's header read and the image decoded once); errors name the `settings`."""
    keep_tensorflow_off_accelerators()
    if spec.dataset == "digits":
        return digits_source(spec.image_size)
    if spec.dataset == "folder":
        return folder_source(spec, settings)
    return tfds_source(spec, settings)
