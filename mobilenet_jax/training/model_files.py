"""The model a finished run writes: its workdir's model file, then export_path (`ModelFiles`)."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax

from mobilenet_jax import weights
from mobilenet_jax.interop.preprocessing import Preprocessing
from mobilenet_jax.model import MobileNetV1
from mobilenet_jax.paths import to_path
from mobilenet_jax.training.state import TrainState


class ExportError(OSError):
    """A finished run's model could not be written at export_path; the workdir holds it."""


def exported_variables(state: TrainState, result: dict[str, float]) -> tuple[dict[str, Any], str]:
    """The variables to export and which they are: the EMA ones ("ema") unless the final
    evaluation found the raw ones more accurate ("raw"), or the raw ones when there is no EMA."""
    use_ema = state.ema is not None and result.get("eval_accuracy", 0.0) >= result.get("eval_accuracy_raw", 0.0)
    return state.variables(ema=use_ema), "ema" if use_ema else "raw"


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """Where a finished run writes its model: the workdir's model file (weights.MODEL_FILE) first,
    then export_path when set, so that an export_path that cannot be written loses nothing."""

    workdir: str
    export_path: str | None
    model: MobileNetV1
    class_names: Sequence[str]
    preprocessing: Preprocessing

    def paths(self) -> list[str]:
        """The workdir's model file, then export_path when it is set and another file."""
        own = str(to_path(self.workdir) / weights.MODEL_FILE)
        if self.export_path and to_path(self.export_path) != to_path(own):
            return [own, self.export_path]
        return [own]

    def missing(self) -> bool:
        """Whether the model file is missing or incomplete at one of `paths`."""
        return not all(map(_complete_model, self.paths()))

    def write(self, variables: dict[str, Any], *, missing_only: bool = False) -> str:
        """Write the model with `variables` at `paths` (with `missing_only`, where it is missing or
        incomplete), on process 0; returns where it is: export_path when set.

        The workdir's file comes first; an OSError there names it. Then an export_path that cannot
        be written raises an ExportError naming it, the error and the workdir's file.
        """
        own, *exports = self.paths()
        if jax.process_index() != 0:
            return self.paths()[-1]
        if not (missing_only and _complete_model(own)):
            try:
                self._save(own, variables)
            except OSError as error:
                raise OSError(
                    f"cannot write the model file {own}: {error.strerror or error}; free space there (or fix its "
                    "permissions), then rerun the same command: it writes the model from the last checkpoint"
                ) from error
        for path in exports:
            if missing_only and _complete_model(path):
                continue
            try:
                self._save(path, variables)
            except Exception as error:  # epath's backends (local, gs://) raise various types
                raise ExportError(
                    f"export_path {path} cannot be written ({type(error).__name__}: {error}); the model is in "
                    f"{own}: copy it from there, or rerun the same command with a writable "
                    "--config.export_path, which writes it there"
                ) from error
        return self.paths()[-1]

    def _save(self, path: str, variables: dict[str, Any]) -> None:
        """The model file at `path`, with its fields, class names and preprocessing beside it."""
        weights.save_model(path, self.model, variables, self.class_names, preprocessing=self.preprocessing)


def _complete_model(path: str) -> bool:
    """Whether a whole model file is at `path`: the preprocessing file, which `weights.save_model`
    writes last, is there."""
    return to_path(path + weights.PREPROCESSING_SUFFIX).exists()
