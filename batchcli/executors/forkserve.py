"""The fork server that local workers are forked from (where the platform has one).

A clean, single-threaded process that imports OpenCV, NumPy and the pipeline's op modules once
(`warm_up`: the CLI calls it before discovery, the runner before it writes to the journal), so
a worker, and a crashed worker's replacement, starts in milliseconds instead of paying those
imports itself (0.15-0.3 s of CPU each). Its workers let go of its "alive" pipe (`leave`), so it
exits when the runner does, and they die with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Iterable

PRELOAD = ("cv2", "batchcli.executors.worker", "batchcli.imaging.imageio", "batchcli.imaging.encode",
           "batchcli.pipeline")
"""What every worker imports (NumPy comes with OpenCV; the pipeline module brings every op):
imported once, in the fork server."""
START_METHOD = "forkserver" if sys.platform != "win32" and hasattr(socket, "CMSG_LEN") and \
    hasattr(socket, "SCM_RIGHTS") and hasattr(socket.socket, "sendmsg") else "spawn"
"""multiprocessing's own test of the platform (its start methods), without importing it."""


_GUESS: list[int] = []
"""The thread count of a server started on a guess (`guessed`), until a call confirms it."""


SHIELDED = {signal.SIGHUP, signal.SIGTERM}
"""Blocked in the fork server and its workers: signals sent to the whole process group."""


def warm_up(modules: Iterable[str] = (), threads: int = 1, guessed: bool = False, fork: bool = False) -> None:
    """Start the fork server now, importing PRELOAD and `modules` (the pipeline's op modules)
    while the caller goes on with its own work. Its
    environment is this process's, with OMP_NUM_THREADS at `threads` unless set (as a spawned
    worker sets it before its first import: OpenBLAS sizes its thread pool when NumPy loads).
    Once started it keeps its imports: a later call is a no-op, except the first call after one
    `guessed` (the CLI's, before it has parsed its flags: cli/warm.py), which starts it again
    when the guess of `threads` was wrong (no worker has been forked from it yet). It exits with
    this process. `fork`: the CLI's first call, in a process that is still small and has one
    thread: the server is this process forked (`_fork_first`)."""
    if START_METHOD != "forkserver":
        return
    preload = [*PRELOAD, *(m for m in modules if m not in PRELOAD)]
    if fork and guessed and "multiprocessing.forkserver" not in sys.modules and _fork_first(preload, threads):
        _GUESS.append(threads)
        return
    from multiprocessing import forkserver

    if forkserver._forkserver._forkserver_pid is not None:  # started: it keeps its first preload
        if guessed or not _GUESS or _GUESS.pop() == threads:
            return
        stop_server(now=True)
    if guessed:
        _GUESS.append(threads)
    forkserver.set_forkserver_preload(preload)
    unset = "OMP_NUM_THREADS" not in os.environ
    if unset:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    # SIGHUP and SIGTERM blocked while it starts, so the server and its resource tracker (and the
    # workers it forks) inherit them blocked: a hung-up terminal, `timeout` and a systemd stop
    # signal the whole process group, and the server's death would take the workers with it
    # (the runner decides what SIGTERM means). It exits with the runner all the same.
    masked = signal.pthread_sigmask(signal.SIG_BLOCK, SHIELDED)
    try:
        _untracked()
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, masked)
        if unset:
            del os.environ["OMP_NUM_THREADS"]


def _fork_first(preload: list[str], threads: int) -> bool:
    """Linux, the CLI's first thing: the server is this process, forked before it imports
    multiprocessing (whose imports, 10-15 ms, then run beside the server's), given a listener in
    the abstract socket namespace and handed to multiprocessing as the server it started. The
    server begins its imports at once, without a new interpreter's start, its site and
    multiprocessing's imports first (25-30 ms: ready that much sooner, on that much less CPU).
    False where that cannot be done (another system, more than one thread): then
    multiprocessing starts it."""
    threading = sys.modules.get("threading")
    if not sys.platform.startswith("linux") or (threading is not None and threading.active_count() > 1):
        return False
    address = f"\0batchcli-forkserver-{os.getpid()}-{os.urandom(6).hex()}"
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(address)
        listener.listen()
        alive_r, alive_w = os.pipe()
    except OSError:
        listener.close()
        return False
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    masked = signal.pthread_sigmask(signal.SIG_BLOCK, SHIELDED)  # (see warm_up)
    try:
        pid = os.fork()
        if pid == 0:
            _serve(listener.fileno(), alive_r, alive_w, preload, threads)  # never returns
    except OSError:
        os.close(alive_w)
        return False
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, masked)
        listener.close()
        os.close(alive_r)
    from multiprocessing import forkserver

    server = forkserver._forkserver
    server._forkserver_address, server._forkserver_alive_fd, server._forkserver_pid = address, alive_w, pid
    server._preload_modules = preload
    _untracked()
    return True


def _serve(listener: int, alive_r: int, alive_w: int, preload: list[str], threads: int) -> None:
    """The forked server's life: multiprocessing's fork server on `listener`, until the "alive"
    pipe's last writer is gone; then this process ends (never returns)."""
    code = 1
    try:
        os.close(alive_w)
        for name in os.listdir("/proc/self/fd"):  # only what the server uses (and 0, 1, 2)
            if int(name) > 2 and int(name) not in (listener, alive_r):
                try:
                    os.close(int(name))
                except OSError:
                    pass
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        if os.environ.get("BATCHCLI_TEST_SERVER_DELAY"):  # tests only: a server slow to get ready
            import time

            time.sleep(float(os.environ["BATCHCLI_TEST_SERVER_DELAY"]))
        from multiprocessing.forkserver import main

        main(listener, alive_r, preload)
        code = 0
    except SystemExit:  # the runner is gone
        code = 0
    finally:
        os._exit(code)


def stop_server(now: bool = False, reap: bool = True) -> None:
    """Stop the fork server and reap it (its CPU time counts to this process's children, and
    no process of the run outlives it); `now`: kill it, even in the middle of its imports.
    The next pool starts a fresh one. `reap=False` (with `now`): killed, and reaped by a later
    call (the CLI's, as it exits), so the run's last moments are not spent waiting while the
    kernel tears the server down."""
    if START_METHOD != "forkserver":
        return
    from multiprocessing import forkserver

    _GUESS.clear()
    _tracked()
    server = forkserver._forkserver
    pid = server._forkserver_pid
    try:
        if now and pid is not None:
            os.kill(pid, signal.SIGKILL)
        if now and not reap and pid is not None:
            os.close(server._forkserver_alive_fd)
            address = server._forkserver_address
            server._forkserver_alive_fd = server._forkserver_address = server._forkserver_pid = None
            _LATE.append(pid)
            if isinstance(address, str) and not address.startswith("\0"):
                os.unlink(address)
        else:
            server._stop()
    except (AttributeError, OSError):
        pass
    for late in list(_LATE):
        try:
            if os.waitpid(late, 0 if reap else os.WNOHANG)[0] == 0:
                continue
        except ChildProcessError:
            pass
        _LATE.remove(late)


_LATE: list[int] = []
"""Servers killed and not yet reaped (`stop_server(reap=False)`)."""


def _untracked() -> None:
    """No resource tracker for the server and its workers, unless this process runs one already.

    multiprocessing starts one (a third interpreter: 0.03-0.05 s of CPU, while the command and
    the server's imports share the cores) only to hand its pipe to every process the server
    forks. It cleans up named semaphores and shared memory a dead process leaked, and no worker
    makes either: a worker's shared integer is an anonymous mapping, its pipe a socket pair. The
    server gets a pipe end that goes nowhere (/dev/null) instead; `stop_server` takes it back, so
    a later pool of another kind (Dask's, in the same process) gets a real tracker."""
    from multiprocessing import resource_tracker

    tracker = resource_tracker._resource_tracker
    if tracker._fd is None:
        tracker._fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        _NOWHERE.append(tracker._fd)


def _tracked() -> None:
    """Undo `_untracked`: the next user of the resource tracker starts a real one."""
    from multiprocessing import resource_tracker

    tracker = resource_tracker._resource_tracker
    while _NOWHERE:
        fd = _NOWHERE.pop()
        if tracker._fd == fd:
            tracker._fd = None
        os.close(fd)


_NOWHERE: list[int] = []
"""The /dev/null descriptor standing in for the resource tracker's pipe (`_untracked`)."""


def leave() -> None:
    """In a worker forked by the server: close the server's "alive" pipe, which every child
    inherits, so that the server sees EOF as soon as the runner is gone (and exits)."""
    if START_METHOD != "forkserver":
        return
    from multiprocessing import forkserver

    server = forkserver._forkserver
    if forkserver.get_inherited_fds() is not None and server._forkserver_alive_fd is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None
