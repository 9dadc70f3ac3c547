"""What every format's writer does around its conversion: check the kind and its calibration
first, write the result last.

A format's `Kinds` says which kinds it writes and whether its int8 kind needs calibration images;
the command, `exporters.export` and the writer itself all ask it, so they agree.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from etils import epath

from mobilenet_jax.choices import check_choice
from mobilenet_jax.export.quantize import has_trained_ranges
from mobilenet_jax.export.source import Deployable


@dataclasses.dataclass(frozen=True)
class Kinds:
    """The kinds a format writes, `format_name` as errors name it. An "int8" kind is the int8
    model of `quantize`: it needs calibration images unless the model is quantization-aware
    with trained activation ranges."""

    format_name: str
    names: tuple[str, ...]

    def needs_calibration(self, deployable: Deployable, kind: str) -> bool:
        """Whether writing `deployable` as `kind` needs calibration images."""
        return kind == "int8" and not has_trained_ranges(deployable.model, deployable.variables)

    def check(self, deployable: Deployable, kind: str, calibration: Any) -> None:
        """Raise a one-line ValueError for a kind the format lacks, or one that needs calibration
        images and has none."""
        check_choice(f"{self.format_name} kind", kind, self.names)
        if calibration is None and self.needs_calibration(deployable, kind):
            raise ValueError(
                f"{self.format_name} kind 'int8' needs calibration images: pass --calibration digits or a folder"
            )


def written(data: bytes, path: str | None) -> bytes:
    """`data`, also written to the file `path` when given."""
    if path is not None:
        epath.Path(path).write_bytes(data)
    return data
