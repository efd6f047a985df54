"""The op registry. Each module below registers its ops on import."""

from __future__ import annotations

import importlib

from batchcli.errors import ConfigError
from batchcli.ops.base import REGISTRY, Frame, Op, Param, register

__all__ = ["REGISTRY", "Frame", "Op", "Param", "register", "get_op", "all_ops"]

# One module per family; a module missing here is simply not offered (e.g. during development).
_MODULES = (
    "geometry",
    "output",
    "color",
    "detail",
    "overlay",
    "analyze",
    "model",
    "faces",
)
_loaded = False


def _load() -> None:
    global _loaded
    if _loaded:
        return
    for mod in _MODULES:
        try:
            importlib.import_module(f"batchcli.ops.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"batchcli.ops.{mod}":
                raise
    _loaded = True


def get_op(name: str) -> type[Op]:
    _load()
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ConfigError(f"unknown operation {name!r} (known: {known}; see 'batchcli ops')") from None


def all_ops() -> dict[str, type[Op]]:
    _load()
    return dict(sorted(REGISTRY.items()))
