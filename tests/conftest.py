"""Shared fixtures: a private batch home, sample images built in tmp_path, and the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test cleanly when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not available")
    return p


LONG_FIRST = (
    "test_recover.py::test_kill9_recover_resume_50_kills",
    "test_recover.py::test_kill9_recover_resume_fast",
    "test_no_traceback.py::test_resume_racing_cleanup_never_shows_a_traceback",
    "test_dask.py::test_scheduler_worker_killed_then_runner_killed",
    "test_dask.py::test_pause_then_scheduler_lost_then_local_resume",
    "test_queue.py::test_priority_order_and_a_running_batch_yields_to_a_higher_one",
    "test_queue.py::test_two_batches_share_two_slots",
    "test_durable_groups.py::test_kill9_mid_group_every_recorded_output_is_durable",
    "test_shards.py::test_kill9_while_a_shard_fills",
)
"""The longest tests (seconds to a minute each: kill loops, clusters, shared slots), sent to the
test processes first so that none of them starts last and leaves the others idle at the end."""


def pytest_collection_modifyitems(items: list) -> None:
    def rank(item) -> int:
        return next((i for i, key in enumerate(LONG_FIRST) if key in item.nodeid), len(LONG_FIRST))

    items.sort(key=rank)  # stable: the rest keep their order


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("BATCHCLI_HOME", str(h))
    return h


def cli(*args: str, home: Path | None = None, input: str | None = None, timeout: float = 120,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m batchcli ARGS` as a real process (stdout is a pipe: plain log output)."""
    e = dict(os.environ)
    e.pop("CI", None)
    if home is not None:
        e["BATCHCLI_HOME"] = str(home)
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "batchcli", *args], capture_output=True, text=True,
                          input=input, timeout=timeout, env=e)


def cli_json(*args: str, home: Path | None = None) -> dict:
    r = cli(*args, "--json", home=home)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def make_image(path: Path, w: int = 64, h: int = 48, seed: int = 0, ext: str | None = None) -> Path:
    """Write a deterministic colour image; the format follows the extension."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[: h // 2] = (img[: h // 2] // 2) + 60  # some structure, so encoders have work to do
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(ext or path.suffix, img)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def make_images(folder: Path, n: int, w: int = 64, h: int = 48, prefix: str = "p") -> Path:
    """`folder` with n images PREFIX000.png... (make_image, seeds 0..n-1)."""
    for k in range(n):
        make_image(folder / f"{prefix}{k:03d}.png", w, h, seed=k)
    return folder


@pytest.fixture
def tiny_fs(tmp_path):
    """A 2 MiB tmpfs (a disk about to be full), unmounted afterwards; skipped where it cannot
    be mounted (not root)."""
    fs = tmp_path / "fs"
    fs.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(fs)],
                                           capture_output=True).returncode:
        pytest.skip("needs a small tmpfs (mount, as root)")
    yield fs
    subprocess.run(["umount", "-l", str(fs)], capture_output=True)


def fill(fs: Path, leave: int = 0) -> Path:
    """Fill the file system of `fs` but `leave` bytes with a file; its path."""
    st = os.statvfs(fs)
    filler = fs / "filler"
    with open(filler, "ab") as fh:
        fh.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def make_tree(root: Path, n: int = 20, size: tuple[int, int] = (64, 48)) -> list[Path]:
    """n images over nested folders in a few formats."""
    exts = [".jpg", ".png", ".webp", ".bmp", ".tif"]
    out = []
    for k in range(n):
        sub = root / (f"d{k % 3}" if k % 2 else "") / ("deep" if k % 5 == 0 else "")
        out.append(make_image(sub / f"img{k:03d}{exts[k % len(exts)]}", *size, seed=k))
    return out


@pytest.fixture
def bind_mount():
    """mount --bind SRC DST (root only; skips cleanly where it is not allowed); unmounted after."""
    mounted = []

    def mount(src, dst):
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("bind mounts need root")
        r = subprocess.run(["mount", "--bind", str(src), str(dst)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"mount --bind not allowed here: {r.stderr.strip()}")
        mounted.append(dst)

    yield mount
    for dst in mounted:
        subprocess.run(["umount", str(dst)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only); skips where it cannot be mounted."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (the injected-error test covers disk_full)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill_disk(mnt, leave: int = 0):
    """Fill the disk, leaving about `leave` bytes."""
    import shutil

    filler = mnt / "filler"
    with open(filler, "wb") as fh:
        while shutil.disk_usage(mnt).free > leave + 4096:
            try:
                fh.write(b"\0" * max(4096, min(1 << 20, shutil.disk_usage(mnt).free - leave)))
                fh.flush()
            except OSError:
                break
    return filler
