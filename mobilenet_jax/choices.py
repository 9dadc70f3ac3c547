"""The one check of a field that takes one of a fixed set of values."""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


def check_choice(field: str, value: T, allowed: tuple[Any, ...]) -> T:
    """`value` if it is one of `allowed`; else a ValueError naming the field, the value and the choices."""
    if value not in allowed:
        raise ValueError(f"{field} must be one of {allowed}, got {value!r}")
    return value
