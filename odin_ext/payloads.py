"""Checks that a JSON value can be stored in PostgreSQL ``jsonb`` and fits a size limit.

``jsonb`` rejects the NUL character (``\\u0000``) anywhere in a string or key, and JSON has no
NaN or Infinity. Both are caught here, before a statement fails halfway through a batch.
"""

from __future__ import annotations

import json
import math
from typing import Any


class UnstorableValue(ValueError):
    """A value that cannot be stored as ``jsonb``; ``path`` locates the offending part."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def check_storable(value: Any, path: str = "$") -> None:
    """Raise ``UnstorableValue`` if ``value`` holds a NUL character, NaN, Infinity or a non-JSON type."""
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnstorableValue(path, f"{value} is not a valid JSON number")
        return
    if isinstance(value, str):
        if "\x00" in value:
            raise UnstorableValue(path, "text contains a NUL character (\\u0000)")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_storable(item, f"{path}[{index}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UnstorableValue(path, f"object key {key!r} is not a string")
            if "\x00" in key:
                raise UnstorableValue(path, "object key contains a NUL character (\\u0000)")
            check_storable(item, f"{path}.{key}")
        return
    raise UnstorableValue(path, f"a {type(value).__name__} is not a JSON value")


def json_size(value: Any) -> int:
    """Return the size in bytes of ``value`` encoded as compact JSON."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
