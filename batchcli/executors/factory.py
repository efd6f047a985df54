"""One place picks where items run: the local process pool or a Dask cluster. Neither executor
imports the other."""

from __future__ import annotations

import os
from typing import Any

from batchcli.executors import local
from batchcli.executors.base import Executor
from batchcli.executors.worker import WorkerConfig


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def check_executor(name: str) -> None:
    """An --executor that names no executor is a usage error, before any batch is made."""
    if name in ("", "local", "dask") or name.startswith(("dask://", "tcp://")):
        return
    from batchcli.errors import ConfigError

    raise ConfigError(f"--executor {name!r}: expected local, dask or dask://HOST:PORT")


def make_executor(opt: Any, cfg: WorkerConfig, start: int | None = None) -> Executor:
    """The executor named by --executor: the local process pool (with `start` workers at first,
    default all), or Dask (an optional extra)."""
    check_executor(opt.executor)
    if opt.executor in ("", "local"):
        return local.ProcessPool(cfg, opt.workers, opt.item_timeout, start=start)
    from batchcli.executors import dask  # needs: pip install batchcli[dask]

    return dask.DaskExecutor(cfg, opt)
