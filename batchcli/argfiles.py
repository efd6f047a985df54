"""Files named in arguments (LUTs, fonts, logos, labels, pipeline and look files, input lists):
each must be a regular file under a size cap, checked before a byte is read, so `/dev/zero`, a
FIFO or a folder is refused at once (exit 2) instead of read forever. And folders to write to
(`--out`): checked writable before any work."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable

from batchcli.errors import ConfigError
from batchcli.units import fmt_bytes

MiB = 1 << 20
CAPS = {
    "toml": 1 * MiB,  # --pipeline-file, preset looks
    "labels": 16 * MiB,  # model labels=
    "lut": 64 * MiB,  # a 65^3 .cube is about 6 MiB of text
    "font": 64 * MiB,  # the largest CJK fonts are about 30 MiB
    "image": 64 * MiB,  # watermark image=
    "icc": 8 * MiB,  # profile: the largest real profiles are a few hundred KiB
    "list": 16 << 30,  # --from-file: streamed line by line, never held
    "model": 64 << 30,  # ONNX files, mapped by onnxruntime
}
"""Size caps by kind of file argument (bytes)."""


def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def open_checked(path: str, what: str, kind: str) -> tuple[int, int]:
    """Open `path` for reading without blocking (a FIFO with no writer would block) and check it
    is a regular file within the cap of `kind`. Returns (file descriptor, size); the caller
    closes it. Raises ConfigError naming `what`, the path and the reason."""
    what = what if what.endswith("=") else what + " "
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ConfigError(f"{what}{path}: cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{what}{path}: {_kind(st.st_mode)}, not a regular file")
        cap = CAPS[kind]
        if st.st_size > cap:
            raise ConfigError(f"{what}{path}: {fmt_bytes(st.st_size)} is over the {fmt_bytes(cap, exact=True)} limit for this file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def check_file(path: str, what: str, kind: str) -> None:
    """Only the checks of `open_checked` (for files another library opens by name)."""
    fd, _ = open_checked(path, what, kind)
    os.close(fd)


def read_file(path: str, what: str, kind: str) -> bytes:
    """The whole file, checked first; a file that grows past its cap while read is refused too."""
    fd, _ = open_checked(path, what, kind)
    cap = CAPS[kind]
    what = what if what.endswith("=") else what + " "
    with os.fdopen(fd, "rb") as fh:
        try:
            data = fh.read(cap + 1)
        except OSError as exc:
            raise ConfigError(f"{what}{path}: cannot read: {exc.strerror}") from None
    if len(data) > cap:
        raise ConfigError(f"{what}{path}: larger than the {fmt_bytes(cap, exact=True)} limit for this file")
    return data


def read_text(path: str, what: str, kind: str) -> str:
    """As `read_file`, decoded as UTF-8 (a file that is not is refused, naming it)."""
    try:
        return read_file(path, what, kind).decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what}{'' if what.endswith('=') else ' '}{path}: not UTF-8 text") from None


def check_writable_folder(folder: str, what: str) -> None:
    """`folder` (or, when it does not exist yet, its nearest existing parent) takes a new file:
    a read-only file system or a folder without write permission is refused with the reason."""
    probe = folder
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise ConfigError(f"{what} {folder}: {probe} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".batchcli-probe-", dir=probe)
    except OSError as exc:
        raise ConfigError(f"{what} {folder}: cannot write there: {exc.strerror}") from None
    os.close(fd)
    os.unlink(tmp)


def check_target(path: str, what: str, inputs: Iterable[dict] = ()) -> None:
    """A file the tool writes whole and renames into place (`export --zip`, `--manifest`,
    `--report`, a contact sheet, `stats --prometheus`): refused (ConfigError, exit 2, before any
    work) when `path` is a folder, is there but is no regular file (a FIFO, a device node: the
    rename would replace it, never write to it), or is one of `inputs` (item records with
    `dev`, `ino`, `src`: the same device and inode, also through a link)."""
    try:
        st = os.stat(path)
    except NotADirectoryError:  # a file where a folder of the path should be: no write could work
        above = os.path.dirname(os.path.abspath(path))
        while above != os.path.dirname(above) and (os.path.isdir(above) or not os.path.lexists(above)):
            above = os.path.dirname(above)
        raise ConfigError(f"{what} {path}: {above} is a file, not a folder") from None
    except OSError:
        return  # nothing there yet (a dangling link is replaced, not followed)
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what} {path}: is a folder; give the name of the file to write")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{what} {path}: {_kind(st.st_mode)}, not a regular file; it is never replaced "
                          "(give the name of a regular file, or of a new one)")
    for rec in inputs:
        if (rec.get("dev"), rec.get("ino")) == (st.st_dev, st.st_ino):
            raise ConfigError(f"{what} {path}: is the batch's input {rec['src']} (the same file, device "
                              f"{st.st_dev} inode {st.st_ino}); writing it would replace it")
