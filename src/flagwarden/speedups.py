"""The optional compiled modules (C extensions built with the package when a compiler is
there): ``flagwarden._dedup`` (the exposure dedup table) and ``flagwarden._murmur`` (bucketing
of str keys). Each has a pure-Python (or numba) counterpart giving the same answers, used when
the module was not built or when ``FLAGWARDEN_NO_SPEEDUPS=1`` turns them all off."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["NO_SPEEDUPS_ENV", "load"]

NO_SPEEDUPS_ENV = "FLAGWARDEN_NO_SPEEDUPS"
"""Set to 1 to use no compiled module (the same answers, more slowly)."""


def load(name: str) -> ModuleType | None:
    """``flagwarden.<name>`` if it was built and speed-ups are not turned off, else None."""
    if os.environ.get(NO_SPEEDUPS_ENV, "").strip() not in ("", "0"):
        return None
    try:
        return importlib.import_module(f"flagwarden.{name}")
    except ImportError:
        return None
