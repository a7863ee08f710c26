"""Running the quantizer kernels on CuPy arrays: `quantize_cupy(fmt, x, seed)`.

The kernels are compiled once per process and GPU architecture by `compile.py` (with the
options that keep them bit-exact) and loaded with `cupy.RawModule(path=...)` from a
temporary directory that lives as long as the process; CuPy then loads the module once per
device. CuPy is imported only when a kernel runs, so `import rcompile.cuda_ops` works on a
machine without CuPy or without a GPU.
"""

from __future__ import annotations

import atexit
import functools
import math
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rcompile.cuda_ops.compile import KERNEL_NAMES, arch_for, compile_kernels
from rcompile.formats import DFP, Format, MiniFloat, Pow2

if TYPE_CHECKING:
    import cupy

BLOCK_SIZE = 256
"""Threads per block."""

BLOCKS_PER_SM = 8
"""Blocks per multiprocessor in the grid: enough resident threads to saturate memory
bandwidth; the grid-stride loop covers the rest of the array."""

_SEED_MASK = 0xFFFFFFFFFFFFFFFF


def _import_cupy() -> Any:
    """CuPy, with a clear RuntimeError when it or a CUDA device is missing."""
    try:
        import cupy
    except ImportError as error:
        raise RuntimeError("the CUDA quantizers need CuPy: pip install 'rcompile[cuda]'") from error
    if not cupy.cuda.is_available():
        raise RuntimeError("the CUDA quantizers need a CUDA GPU, and none is present")
    return cupy


@functools.cache
def _binary_dir() -> Path:
    """A temporary directory for the compiled binaries, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix="rcompile-cuda-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def _module(arch: str) -> Any:
    """The RawModule for one architecture: compiled and written once per process."""
    cupy = _import_cupy()
    path = _binary_dir() / f"quantize_{arch}.{'cubin' if arch.startswith('sm_') else 'ptx'}"
    path.write_bytes(compile_kernels(arch))
    return cupy.RawModule(path=str(path))


@functools.cache
def _kernels(device_id: int) -> tuple[dict[str, Any], int]:
    """The kernels by name for one device, and the grid size that fills it."""
    cupy = _import_cupy()
    device = cupy.cuda.Device(device_id)
    module = _module(arch_for(int(device.compute_capability)))  # "90" for 9.0
    with device:
        kernels = {name: module.get_function(name) for name in KERNEL_NAMES}
    return kernels, device.attributes["MultiProcessorCount"] * BLOCKS_PER_SM


def kernel_arguments(fmt: Format) -> tuple[str, tuple[np.generic, ...]]:
    """The kernel that quantizes to `fmt` and the format's parameters, as NumPy scalars of
    the C types the kernel declares (CuPy passes a Python int as a 64-bit integer)."""
    if isinstance(fmt, DFP):
        return "quantize_dfp", (np.int32(fmt.bw), np.int32(fmt.fl), np.int32(fmt.signed))
    if isinstance(fmt, MiniFloat):
        return "quantize_minifloat", (
            np.float32(fmt.max),  # exact: at most 24 significant bits, exponent <= 127
            np.int32(fmt.emin),
            np.int32(fmt.mant_bits),
            np.int32(not fmt.has_subnormals),
            np.int32(fmt.has_inf),
        )
    if isinstance(fmt, Pow2):
        return "quantize_pow2", (np.int32(fmt.exp_min), np.int32(fmt.exp_max), np.int32(fmt.zero))
    raise TypeError(f"expected a DFP, MiniFloat or Pow2 format, got {type(fmt).__name__}")


# The kernels' codes for the roundings (round_value in quantize.cu); 1 is stochastic.
ROUNDING_CODES = {"even": 0, "away": 2, "up": 3, "floor": 4}
STOCHASTIC = 1


def rounding_argument(fmt: Format, seed: int | None) -> np.int32:
    """The kernel's rounding code: stochastic with a seed, else the format's mode."""
    if seed is not None:
        return np.int32(STOCHASTIC)
    return np.int32(ROUNDING_CODES[getattr(fmt, "rounding", "even")])


def quantize_cupy(fmt: Format, x: cupy.ndarray, seed: int | None = None) -> cupy.ndarray:
    """Quantize a float32 CuPy array on its GPU, bit for bit as `fmt.quantize` does in NumPy.

    `x` may have any shape and strides (a non-contiguous array is copied to C order first,
    since element i of the C-order flattening keys stochastic rounding). `seed` selects
    stochastic rounding with the same generator as the reference. Returns a new C-contiguous
    float32 array of the same shape.
    """
    cupy = _import_cupy()
    if not isinstance(x, cupy.ndarray) or x.dtype != cupy.float32:
        raise TypeError(
            f"expected a float32 cupy.ndarray, got {type(x).__name__} "
            f"of dtype {getattr(x, 'dtype', None)}"
        )
    name, parameters = kernel_arguments(fmt)
    with x.device:
        if not x.flags.c_contiguous:
            x = cupy.ascontiguousarray(x)
        out = cupy.empty(x.shape, dtype=cupy.float32)
        if x.size == 0:
            return out
        kernels, max_blocks = _kernels(x.device.id)
        blocks = min(math.ceil(x.size / BLOCK_SIZE), max_blocks)
        rounding = rounding_argument(fmt, seed)
        seed_bits = np.uint64(0 if seed is None else seed & _SEED_MASK)
        kernels[name](
            (blocks,),
            (BLOCK_SIZE,),
            (x, out, np.uint64(x.size), *parameters, rounding, seed_bits),
        )
    return out
