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


MAX_DEPTH = 100


def check_storable(value: Any, path: str = "$", depth: int = 0) -> None:
    """Raise ``UnstorableValue`` if ``value`` cannot be stored as ``jsonb``.

    That is: a NUL character or an unpaired surrogate in a string or key, NaN or Infinity,
    nesting deeper than ``MAX_DEPTH`` levels, or a value of a type JSON does not have.
    """
    if depth > MAX_DEPTH:
        raise UnstorableValue(path, f"nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnstorableValue(path, f"{value} is not a valid JSON number")
        return
    if isinstance(value, str):
        _check_text(value, path, "text")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_storable(item, f"{path}[{index}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise UnstorableValue(path, f"object key {key!r} is not a string")
            _check_text(key, path, "object key")
            check_storable(item, f"{path}.{key}", depth + 1)
        return
    raise UnstorableValue(path, f"a {type(value).__name__} is not a JSON value")


def _check_text(text: str, path: str, what: str) -> None:
    if "\x00" in text:
        raise UnstorableValue(path, f"{what} contains a NUL character (\\u0000)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UnstorableValue(path, f"{what} contains an unpaired UTF-16 surrogate") from None


def json_size(value: Any) -> int:
    """Return the size in bytes of ``value`` encoded as compact JSON."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
