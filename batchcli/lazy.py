"""OpenCV and NumPy, imported on first use.

The ops and image modules are imported by the parent process too (to parse and check a
pipeline), which never touches a pixel: `from batchcli.lazy import cv2, np` keeps those imports
out of the command's start-up, and the worker pays for them once, on its first image.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Callable


class LazyModule:
    """Stands for a module; the first attribute read imports it."""

    __slots__ = ("_name", "_mod", "_on_load")

    def __init__(self, name: str, on_load: Callable[[ModuleType], None] | None = None):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_mod", None)
        object.__setattr__(self, "_on_load", on_load)

    def _load(self) -> ModuleType:
        mod = self._mod
        if mod is None:
            mod = importlib.import_module(self._name)
            if self._on_load is not None:
                self._on_load(mod)
            object.__setattr__(self, "_mod", mod)
        return mod

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._load(), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{' (loaded)' if self._mod is not None else ''}>"


def _quiet(mod: ModuleType) -> None:
    """OpenCV's own log lines would only repeat the one-line error we report per item."""
    try:
        mod.utils.logging.setLogLevel(mod.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:
        pass


cv2: Any = LazyModule("cv2", _quiet)
np: Any = LazyModule("numpy")
