"""onnxruntime sessions: provider choice, thread caps, and one cached session per process.

The runner sets two environment variables in every worker process before the first item:

- ``BATCHCLI_THREADS``: intra-op threads per session (default 1, so workers x threads <= cores).
- ``BATCHCLI_PROVIDERS``: a comma list of short provider names from ``--providers``
  (default ``cpu``). Known names: cpu, cuda, tensorrt, openvino. They are tried in the order
  given; a name whose provider is not installed is skipped, and CPU is always the last resort.

`get_session()` keeps one InferenceSession per (model file, providers, threads) in a module-level
dict, so an op's ``prepare()`` can call it freely: the session is built once per process and the
op itself stays picklable.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from batchcli.argfiles import check_file
from batchcli.errors import ConfigError

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger("batchcli.onnx_session")

ENV_THREADS = "BATCHCLI_THREADS"
ENV_PROVIDERS = "BATCHCLI_PROVIDERS"
DEFAULT_THREADS = 1
DEFAULT_PROVIDERS = "cpu"

# Short name -> onnxruntime provider name. Also the preference order used by "auto".
PROVIDERS: dict[str, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_ORT_TO_SHORT = {v: k for k, v in PROVIDERS.items()}

_SESSIONS: dict[tuple, ort.InferenceSession] = {}


def parse_providers(text: str | None = None) -> list[str]:
    """'cuda,cpu' -> ['cuda', 'cpu']. None reads BATCHCLI_PROVIDERS. 'auto' means every known
    provider in preference order (tensorrt, cuda, openvino, cpu). Unknown names -> ConfigError."""
    if text is None:
        text = os.environ.get(ENV_PROVIDERS, "") or DEFAULT_PROVIDERS
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        names = [DEFAULT_PROVIDERS]
    if names == ["auto"]:
        return list(PROVIDERS)
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        raise ConfigError(
            f"unknown provider {unknown[0]!r} (known: {', '.join(PROVIDERS)}, or auto)"
        )
    out: list[str] = []
    for n in names:
        if n not in out:
            out.append(n)
    return out


def thread_count(value: str | int | None = None) -> int:
    """Intra-op threads per session: the argument, else BATCHCLI_THREADS, else 1."""
    raw = value if value is not None else os.environ.get(ENV_THREADS, "")
    try:
        n = int(raw) if str(raw).strip() else DEFAULT_THREADS
    except ValueError:
        raise ConfigError(f"{ENV_THREADS}: {raw!r} is not a whole number") from None
    if n < 0:
        raise ConfigError(f"{ENV_THREADS}: {n} is negative")
    return n  # 0 lets onnxruntime use every core


def available_providers() -> list[str]:
    """Short names of the providers this onnxruntime build offers, in preference order."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    return [short for short, full in PROVIDERS.items() if full in have]


@dataclass(frozen=True)
class ProviderChoice:
    requested: tuple[str, ...]
    chosen: tuple[str, ...]  # short names actually passed to onnxruntime, best first
    missing: tuple[str, ...]  # requested but not installed

    @property
    def ort_names(self) -> list[str]:
        return [PROVIDERS[n] for n in self.chosen]

    def describe(self) -> str:
        import onnxruntime as ort

        line = f"onnxruntime {ort.__version__}: using {self.chosen[0]}"
        if len(self.chosen) > 1:
            line += f" (then {', '.join(self.chosen[1:])})"
        if self.missing:
            line += f"; requested but not available here: {', '.join(self.missing)}"
            hint = {"cuda": "onnxruntime-gpu", "tensorrt": "onnxruntime-gpu with TensorRT",
                    "openvino": "onnxruntime-openvino"}
            pkgs = sorted({hint[m] for m in self.missing if m in hint})
            if pkgs:
                line += f" (install {' or '.join(pkgs)})"
        return line


def choose_providers(text: str | None = None) -> ProviderChoice:
    """Resolve a --providers value (None: BATCHCLI_PROVIDERS) against what is installed.
    CPU is always appended as the fallback for operators other providers lack."""
    requested = parse_providers(text)
    have = set(available_providers())
    chosen = [n for n in requested if n in have]
    if "cpu" not in chosen:
        chosen.append("cpu")
    missing = [n for n in requested if n not in have]
    return ProviderChoice(tuple(requested), tuple(chosen), tuple(missing))


def describe_providers(text: str | None = None) -> str:
    """One line for the CLI: which provider the sessions will use, and why."""
    return choose_providers(text).describe()


def session_options(threads: int) -> ort.SessionOptions:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # old exporters trigger harmless "initializer in graph inputs" warnings
    # Idle intra-op threads must not spin: a worker decodes and encodes between runs, and spinning
    # threads doubled the CPU per image with 2 threads (squeezenet, 2 cores) for no gain.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def get_session(path: str, providers: str | None = None, threads: int | None = None) -> ort.InferenceSession:
    """The process-wide session for this model file, built on first use.

    Raises ConfigError when the file is missing or not a model onnxruntime can load."""
    choice = choose_providers(providers)
    n = thread_count(threads)
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read model: {exc.strerror}") from None
    key = (real, st.st_mtime_ns, st.st_size, choice.chosen, n)
    sess = _SESSIONS.get(key)
    if sess is None:
        sess = _load(real, path, session_options(n), choice.ort_names)
        _SESSIONS[key] = sess
        log.debug("loaded %s with %s, %d thread(s)", path, sess.get_providers(), n)
    return sess


def _load(real: str, shown: str, so: Any, providers: list[str]) -> ort.InferenceSession:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(real, sess_options=so, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        msg = " ".join(str(exc).split())
        if len(msg) > 300:
            msg = msg[:297] + "..."
        raise ConfigError(f"{shown}: not a usable ONNX model: {msg}") from None


def clear_cache() -> None:
    """Drop every cached session and model description (tests, or a parent that only inspected a model)."""
    _SESSIONS.clear()
    _INFOS.clear()


def short_provider(ort_name: str) -> str:
    return _ORT_TO_SHORT.get(ort_name, ort_name)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple  # ints for fixed axes, None for dynamic ones
    dtype: str  # numpy dtype name: float32, float16, uint8, ...


@dataclass(frozen=True)
class ModelInfo:
    path: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]


_ORT_TYPES = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(int32)": "int32",
    "tensor(int64)": "int64", "tensor(bool)": "bool",
}


def _tensor(arg: Any) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in (arg.shape or ()))
    return TensorInfo(arg.name, shape, _ORT_TYPES.get(arg.type, arg.type))


def tensor_infos(sess: ort.InferenceSession) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    return tuple(_tensor(a) for a in sess.get_inputs()), tuple(_tensor(a) for a in sess.get_outputs())


_INFOS: dict[tuple, tuple] = {}
"""(real path, mtime, size) -> (inputs, outputs): a pipeline is checked more than once (parsed,
validated, fingerprinted), and each look loaded the model again (25 ms for squeezenet)."""


def inspect_model(path: str) -> ModelInfo:
    """Load a model once on CPU, without graph optimisation (fast), to read its inputs and
    outputs; the session is not kept (the answer is, while the file is unchanged). Raises
    ConfigError for a missing or invalid file."""
    import onnxruntime as ort

    if not os.path.lexists(path):
        raise ConfigError(f"{path}: model file not found")
    check_file(path, "model", "model")
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_mtime_ns, st.st_size)
    if key not in _INFOS:
        so = session_options(1)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = _load(path, path, so, [PROVIDERS["cpu"]])
        _INFOS[key] = tensor_infos(sess)
        del sess
    ins, outs = _INFOS[key]
    return ModelInfo(path, ins, outs)
