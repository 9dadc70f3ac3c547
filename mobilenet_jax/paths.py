"""Every file the project reads or writes goes through `etils.epath`, which understands gs://."""

from __future__ import annotations

import os

from etils import epath


def to_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath.Path: local paths made absolute, cloud URLs (gs://...) kept as they are."""
    if "://" in os.fspath(path):
        return epath.Path(path)
    return epath.Path(os.path.abspath(path))
