"""Load-awareness: how busy the machine is, and how many workers a runner may run because of it.

`--max-load L` is the 1-minute load average per usable core (`--max-load 1.5`) or, written as a
percentage, the kernel's CPU pressure where it has one (PSI, `some avg10` of /proc/pressure/cpu:
`--max-load 40%`). `--min-free-memory SIZE` is the memory the kernel says is available. While
either is exceeded, the runner lets in-flight items finish and runs one worker fewer each second,
down to none; once the machine has been quiet for QUIET_FOR seconds it adds one back each second.

`BATCHCLI_LOAD_FILE` names a JSON file whose figures replace the measured ones, e.g.
`{"load": 0.5, "cpu_pressure": 10, "mem_available": 1073741824}` (any may be left out): tests
drive the runner through it instead of the real machine's load.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from batchcli.errors import ConfigError

LOAD_FILE_ENV = "BATCHCLI_LOAD_FILE"
SAMPLE_EVERY = 1.0
"""Seconds between looks at the machine's load and memory."""
QUIET_FOR = 3.0
"""Seconds the machine must stay under the limits before a throttled runner adds a worker back."""
PSI_CPU = "/proc/pressure/cpu"
MAX_LOAD_CEILING = 1000.0


@dataclass
class Sample:
    load: float  # 1-minute load average per usable core
    cpu_pressure: float | None  # percent of the last 10 s some task waited for a CPU (PSI)
    mem_available: int | None  # bytes


def _fake() -> dict:
    path = os.environ.get(LOAD_FILE_ENV)
    if not path:
        return {}
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read(4096) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _psi() -> float | None:
    try:
        with open(PSI_CPU, "rb") as fh:
            first = fh.readline().split()
    except OSError:
        return None
    for field in first[1:]:
        if field.startswith(b"avg10="):
            return float(field[6:])
    return None


def sample() -> Sample:
    """The machine's load now (or the figures of BATCHCLI_LOAD_FILE)."""
    from batchcli.engine.slots import usable_cpus

    fake = _fake()
    load = fake.get("load")
    if not isinstance(load, (int, float)):
        load = os.getloadavg()[0] / usable_cpus()
    psi = fake.get("cpu_pressure")
    if not isinstance(psi, (int, float)):
        psi = _psi()
    mem = fake.get("mem_available")
    if not isinstance(mem, int):
        mem = available_memory()
    return Sample(float(load), psi, mem)


def available_memory() -> int | None:
    """The memory available to new work, in bytes (psutil's virtual_memory().available: Linux's
    MemAvailable, read here without importing psutil); None when unknown."""
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:
        return None


def parse_max_load(text: str | None) -> tuple[str, float] | None:
    """`--max-load 1.5` -> ("load", 1.5); `--max-load 40%` -> ("psi", 40.0). Exit 2 when bad."""
    if text is None or str(text).strip() == "":
        return None
    s = str(text).strip()
    kind = "psi" if s.endswith("%") else "load"
    try:
        value = float(s[:-1] if kind == "psi" else s)
    except ValueError:
        value = math.nan
    top = 100.0 if kind == "psi" else MAX_LOAD_CEILING
    if not (math.isfinite(value) and 0 <= value <= top):
        raise ConfigError(f"--max-load {text!r}: expected a load per core from 0 to {MAX_LOAD_CEILING:g} "
                          f"(1.5) or a CPU pressure from 0% to 100% (40%)")
    if kind == "psi" and not os.path.exists(PSI_CPU) and not os.environ.get(LOAD_FILE_ENV):
        raise ConfigError(f"--max-load {s}: this kernel reports no CPU pressure ({PSI_CPU}); "
                          f"give a load per core instead, e.g. --max-load 1.5")
    return kind, value


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


class Monitor:
    """Samples the machine at most once per SAMPLE_EVERY seconds."""

    def __init__(self, source: Callable[[], Sample] = sample):
        self.source = source
        self.last: Sample | None = None
        self._at = -math.inf

    def get(self, now: float | None = None) -> tuple[Sample, bool]:
        """The latest sample, and whether it was taken just now."""
        now = time.monotonic() if now is None else now
        if self.last is None or now - self._at >= SAMPLE_EVERY:
            self.last, self._at = self.source(), now
            return self.last, True
        return self.last, False


class Throttle:
    """How many workers the machine's load allows: `cap(...)` -> (workers, reason or None)."""

    def __init__(self, max_load: tuple[str, float] | None, min_free_memory: int, monitor: Monitor):
        self.max_load = max_load
        self.min_free = min_free_memory
        self.monitor = monitor
        self._cap: int | None = None  # None until the first sample
        self._quiet: float | None = None
        self.reason: str | None = None

    @property
    def active(self) -> bool:
        return self.max_load is not None or self.min_free > 0

    def busy(self, s: Sample) -> str | None:
        """Why the machine is too busy now, or None."""
        if self.max_load is not None:
            kind, limit = self.max_load
            if kind == "load" and s.load > limit:
                return f"load {s.load:.2f} per core is over --max-load {limit:g}"
            if kind == "psi" and s.cpu_pressure is not None and s.cpu_pressure > limit:
                return f"CPU pressure {s.cpu_pressure:.0f}% is over --max-load {limit:g}%"
        if self.min_free and s.mem_available is not None and s.mem_available < self.min_free:
            return f"free memory {_mib(s.mem_available)} is under --min-free-memory {_mib(self.min_free)}"
        return None

    def figures(self, s: Sample) -> str:
        """The figures the limits given look at, as measured."""
        out = []
        if self.max_load is not None and self.max_load[0] == "load":
            out.append(f"load {s.load:.2f} per core")
        elif self.max_load is not None and s.cpu_pressure is not None:
            out.append(f"CPU pressure {s.cpu_pressure:.0f}%")
        if self.min_free and s.mem_available is not None:
            out.append(f"free memory {_mib(s.mem_available)}")
        return ", ".join(out)

    def cap(self, running: int, full: int, now: float | None = None) -> int:
        """At most this many workers. One fewer per sample while busy (from `running`), none at
        once when the machine is busy before the first worker; one more per sample after
        QUIET_FOR quiet seconds."""
        if not self.active:
            return full
        now = time.monotonic() if now is None else now
        s, fresh = self.monitor.get(now)
        if not fresh and self._cap is not None:
            return min(self._cap, full)
        why = self.busy(s)
        if why is not None:
            self.reason = why
            self._quiet = None
            self._cap = 0 if self._cap is None else max(0, min(self._cap, running) - 1)
        elif self._cap is None:
            self._cap = full
        elif self._cap < full:
            if self._quiet is None:
                self._quiet = now
            if now - self._quiet >= QUIET_FOR:
                self._cap += 1
            seen = self.figures(s)
            self.reason = (f"back within the limits{f' ({seen})' if seen else ''}: a worker more each second "
                           f"after {QUIET_FOR:g} quiet seconds")  # not the busy figure of a while ago
        if self._cap >= full:
            self.reason = None
        return min(self._cap, full)
