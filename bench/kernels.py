"""Throughput of the quantizers, as a ratio to copying the same array.

A quantizer reads and writes each element once, so a copy of the same bytes is the speed
limit; the ratio copy_time / quantize_time (1.0 = as fast as a copy) says how far each
implementation is from it, and stays comparable across machines. Measured on 2**24 random
float32 values, for the NumPy reference quantizers against `np.copyto`, and, when a CUDA GPU
is present, for the CuPy kernels against a device-to-device `cupy.copyto`, timed with CUDA
events. Each time is the median of several runs after a warm-up.

    .venv/bin/python bench/kernels.py
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rcompile.cuda_ops import quantize_cupy
from rcompile.formats import DFP, Format, MiniFloat, Pow2

SIZE = 2**24
REPEATS = 7
WARMUP = 2
SEED = 0
FORMATS: tuple[Format, ...] = (DFP(8, 5), MiniFloat(4, 3, "fn"), Pow2(-8, -1))


@dataclass(frozen=True)
class Row:
    """One measurement: milliseconds per call and throughput relative to a copy."""

    format: str
    backend: str
    ms: float | None
    ratio: float | None

    def markdown(self) -> str:
        if self.ms is None or self.ratio is None:
            return f"| {self.format} | {self.backend} | not measured (no CUDA GPU) | |"
        return f"| {self.format} | {self.backend} | {self.ms:.2f} | {self.ratio:.3f} |"


def median_seconds(run: Callable[[], object]) -> float:
    """Median wall time of `run` on the CPU after a warm-up."""
    for _ in range(WARMUP):
        run()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def numpy_rows(x: np.ndarray) -> list[Row]:
    """The NumPy reference quantizers against np.copyto."""
    destination = np.empty_like(x)
    copy = median_seconds(lambda: np.copyto(destination, x))
    rows = [Row("copy", "numpy", copy * 1e3, 1.0)]
    for fmt in FORMATS:
        seconds = median_seconds(lambda fmt=fmt: fmt.quantize(x))
        rows.append(Row(fmt.name, "numpy", seconds * 1e3, copy / seconds))
    return rows


def cuda_device() -> Any | None:
    """CuPy when a CUDA GPU is present, else None."""
    try:
        import cupy
    except ImportError:
        return None
    return cupy if cupy.cuda.is_available() else None


def median_gpu_ms(cupy: Any, run: Callable[[], object]) -> float:
    """Median device time of `run` in milliseconds, timed with CUDA events after a warm-up."""
    for _ in range(WARMUP):
        run()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for _ in range(REPEATS):
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


def cupy_rows(x: np.ndarray) -> list[Row]:
    """The CUDA kernels against a device-to-device copy, or placeholders without a GPU."""
    cupy = cuda_device()
    if cupy is None:
        return [Row(name, "cupy", None, None) for name in ("copy", *(f.name for f in FORMATS))]
    source = cupy.asarray(x)
    destination = cupy.empty_like(source)
    copy = median_gpu_ms(cupy, lambda: cupy.copyto(destination, source))
    rows = [Row("copy", "cupy", copy, 1.0)]
    for fmt in FORMATS:
        ms = median_gpu_ms(cupy, lambda fmt=fmt: quantize_cupy(fmt, source))
        rows.append(Row(fmt.name, "cupy", ms, copy / ms))
    return rows


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's processor string elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def gpu_name() -> str:
    """The name of CUDA device 0, or a note that there is none."""
    cupy = cuda_device()
    if cupy is None:
        return "none (no CUDA GPU)"
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def report(rows: list[Row]) -> str:
    """The Markdown report: machine, date, and the table."""
    header = [
        f"Quantizer throughput, {SIZE} float32 values (2**24), median of {REPEATS} runs",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical cores)",
        f"- GPU: {gpu_name()}",
        f"- NumPy {np.__version__}, Python {platform.python_version()}",
        "- ratio = copy time / quantize time (1.0 = as fast as copying the array)",
        "",
        "| format | backend | ms | ratio to copy |",
        "| --- | --- | --- | --- |",
    ]
    return "\n".join(header + [row.markdown() for row in rows])


def main() -> None:
    x = np.random.default_rng(SEED).standard_normal(SIZE, dtype=np.float32)
    print(report(numpy_rows(x) + cupy_rows(x)))


if __name__ == "__main__":
    main()
