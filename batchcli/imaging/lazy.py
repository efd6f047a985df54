"""OpenCV and NumPy, imported on first use.

The ops and image modules are imported by the parent process too (to parse and check a
pipeline), which never touches a pixel: `from batchcli.imaging.lazy import cv2, np` keeps those imports
out of the command's start-up, and the worker pays for them once, on its first image.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any


class LazyModule(ModuleType):
    """Stands for a module. The first attribute read imports it and copies its namespace in,
    so later reads are plain attribute lookups (no per-access cost in hot loops)."""

    def __init__(self, name: str, on_load: Callable[[ModuleType], None] | None = None):
        super().__init__(name)
        self.__dict__["_lazy_on_load"] = on_load

    def __getattr__(self, attr: str) -> Any:  # only called while the name is not copied in yet
        d = self.__dict__
        if "_lazy_loaded" not in d:
            mod = importlib.import_module(self.__name__)
            on_load = d.get("_lazy_on_load")
            if on_load is not None:
                on_load(mod)
            d.update({k: v for k, v in mod.__dict__.items() if k not in ("__name__", "__spec__", "__loader__")})
            d["_lazy_loaded"] = mod
        try:
            return d[attr]
        except KeyError:
            return getattr(d["_lazy_loaded"], attr)  # a submodule imported later, say

    def __repr__(self) -> str:
        return f"<lazy module {self.__name__!r}{' (loaded)' if '_lazy_loaded' in self.__dict__ else ''}>"


def _quiet(mod: ModuleType) -> None:
    """OpenCV's own log lines would only repeat the one-line error we report per item."""
    try:
        mod.utils.logging.setLogLevel(mod.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:
        pass


cv2: Any = LazyModule("cv2", _quiet)
np: Any = LazyModule("numpy")
