"""The one place rcompile opens onnxruntime sessions: calibration, scoring, the search's
evaluations and `verify` all come here, so they run models alike."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache

import onnx
import onnxruntime as ort

from rcompile.errors import UserError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
LEVELS = {
    "disable_all": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


DEVICES = {"cpu": CPU, "cuda": CUDA}
_provider: ContextVar[str] = ContextVar("provider", default=CPU)


def device_provider(device: str) -> str:
    """The provider for a `--device` value: cpu, cuda, or auto (CUDA where onnxruntime has
    it and a GPU is there)."""
    if device == "auto":
        return CUDA if CUDA in providers() else CPU
    if device not in DEVICES:
        raise UserError(f"--device must be one of auto, cpu, cuda, got {device!r}")
    if DEVICES[device] not in providers():
        raise UserError(
            "--device cuda: this onnxruntime has no CUDA provider or sees no GPU "
            "(install onnxruntime-gpu on a machine with a CUDA GPU)"
        )
    return DEVICES[device]


@contextmanager
def on_device(device: str) -> Iterator[str]:
    """Open every session inside on `device`'s provider (calibration, scoring, search)."""
    token = _provider.set(device_provider(device))
    try:
        yield _provider.get()
    finally:
        _provider.reset(token)


def current_provider() -> str:
    return _provider.get()


def use_provider(provider: str) -> None:
    """For a worker process: open its sessions on `provider` from now on."""
    _provider.set(provider)


def open_session(
    model: onnx.ModelProto | bytes,
    level: str = "all",
    provider: str | None = None,
    threads: int | None = None,
    disabled_optimizers: tuple[str, ...] = (),
    shared_arena: bool = False,
) -> ort.InferenceSession:
    """A quiet session for `model` at optimisation `level` (a key of LEVELS) on `provider`
    (by default the one `on_device` chose, else the CPU); `shared_arena`: allocate from one
    CPU arena shared by every such session."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = LEVELS[level]
    if threads:
        options.intra_op_num_threads = threads
    if shared_arena:
        _register_shared_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(
        data,
        options,
        providers=[provider or _provider.get()],
        disabled_optimizers=list(disabled_optimizers),
    )


def providers() -> list[str]:
    """The providers this onnxruntime can run rcompile models on (CPU, and CUDA with a GPU)."""
    return [p for p in (CPU, CUDA) if p in ort.get_available_providers()]


@cache
def _register_shared_arena() -> None:
    """One CPU memory arena for every session the search opens in this process, the FP32
    model's included. Each session's own arena would fault its pages in anew on its first
    batches: on EfficientNet-Lite0 that made a candidate's run 10-20 % slower."""
    info = ort.OrtMemoryInfo(
        "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
    )
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
