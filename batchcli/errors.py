"""Every exception batchcli raises on purpose. The CLI turns them into exit codes."""

from __future__ import annotations

# Exit codes: stable, documented in the README. Scripts and CI depend on them.
EXIT_OK = 0
EXIT_FAILED_ITEMS = 1
EXIT_USAGE = 2
EXIT_PAUSED = 3
EXIT_CANCELLED = 4
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class BatchcliError(Exception):
    """Base class: a one-line message for the user and the exit code that goes with it."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(BatchcliError):
    """Bad pipeline, bad option, bad input list: found before any item runs."""

    exit_code = EXIT_USAGE


class BatchNotFound(BatchcliError):
    """No batch matches the id, prefix or name given (or the prefix is ambiguous)."""

    exit_code = EXIT_USAGE


class InvalidTransition(BatchcliError):
    """The batch is not in a state that allows the requested command."""

    exit_code = EXIT_USAGE


class BatchDamaged(InvalidTransition):
    """The batch folder is not a whole batch (a file missing, left half-made): no command but
    `status`, `list` and `cleanup` touches it."""

    def __init__(self, batch_id: str, reason: str):
        super().__init__(f"batch {batch_id} is damaged ({reason}); remove it with: "
                         "batchcli cleanup --status damaged --older-than 0s")


class BatchLocked(BatchcliError):
    """Another live runner holds the batch lock."""

    exit_code = EXIT_USAGE


class JournalCorrupt(BatchcliError):
    """The journal cannot be used at all (its header is missing or unreadable)."""

    exit_code = 1


class JournalWriteError(BatchcliError):
    """The journal cannot be written: a read-only or full disk, no permission. `full` says
    the disk is full (the runner then pauses the batch instead of failing)."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, full: bool = False):
        super().__init__(message)
        self.full = full


class NothingToExport(BatchcliError):
    """The batch has no completed results."""

    exit_code = 1


class ItemError(Exception):
    """Raised inside a worker for one item; becomes a failed item record, never a batch failure.

    `error_class` is a short stable word: ``decode``, ``truncated``, ``too_large``, ``unsupported``,
    ``unreadable``, ``encode``, ``http`` (4xx download), ``model``, ``op`` (permanent), or ``io``,
    ``network``, ``timeout``, ``crash``, ``oom`` (transient: retried by ``--retries``), or
    ``disk_full`` (pauses the batch instead of failing the item).
    """

    TRANSIENT = frozenset({"timeout", "crash", "oom", "io", "network"})

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class

    @property
    def transient(self) -> bool:
        return self.error_class in self.TRANSIENT


def sqlite_disk_error(path: str, exc: Exception) -> OSError | None:
    """The OSError naming `path` for SQLite's "database or disk is full" and "disk I/O error"
    (the disk's trouble, not the file's: a catalog is not rebuilt for it); None otherwise."""
    import errno

    code = getattr(exc, "sqlite_errorcode", None)
    if code == 13 if code is not None else "disk is full" in str(exc):  # SQLITE_FULL
        return OSError(errno.ENOSPC, "cannot write the catalog: no space left on device", path)
    if code & 0xFF == 10 if code is not None else "disk I/O error" in str(exc):  # SQLITE_IOERR
        return OSError(errno.EIO, f"cannot write the catalog: {exc}", path)
    return None
