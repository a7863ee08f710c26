"""CUDA kernels for the three formats, bit-exact with the NumPy reference quantizers.

`quantize_cupy(fmt, x, seed)` quantizes a float32 CuPy array on the GPU exactly as
`fmt.quantize` does in NumPy, so large tensors (calibration, fine-tuning) can stay on the
device. The kernel source (`quantize.cu`) compiles with NVRTC alone, without a GPU; CuPy is
imported only when a kernel runs.
"""

from rcompile.cuda_ops.compile import (
    COMPILE_OPTIONS,
    KERNEL_NAMES,
    KERNEL_SOURCES,
    KernelCompileError,
    compile_kernels,
    compile_source,
    kernel_source,
)
from rcompile.cuda_ops.launcher import kernel_arguments, quantize_cupy, rounding_argument

__all__ = [
    "COMPILE_OPTIONS",
    "KERNEL_NAMES",
    "KERNEL_SOURCES",
    "KernelCompileError",
    "compile_kernels",
    "compile_source",
    "kernel_arguments",
    "kernel_source",
    "quantize_cupy",
    "rounding_argument",
]
