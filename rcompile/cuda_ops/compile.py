"""Compiling the quantizer kernels with NVRTC, with options that keep them bit-exact.

The kernels match the NumPy reference only if the compiler keeps IEEE float32 semantics:
no fast math, no flush of subnormals to zero, IEEE division, and no contraction of a
multiply and an add into one FMA (which rounds once instead of twice). `COMPILE_OPTIONS`
says so explicitly, whatever NVRTC's defaults.

CuPy's own `RawModule(code=...)` cannot be used for this: it appends `-ftz=true` to every
NVRTC compilation, and the last option wins. So the kernels are compiled here, through
`cupy_backends.cuda.libs.nvrtc`, which needs only the NVRTC library (no GPU, no driver), and
the launcher loads the resulting binary. The compile tests run on machines without a GPU.
"""

from __future__ import annotations

from importlib import resources
from types import ModuleType

KERNEL_SOURCES = ("quantize.cu",)
"""The CUDA C source files of this package."""

KERNEL_NAMES = ("quantize_dfp", "quantize_minifloat", "quantize_pow2")
"""The `extern "C"` kernels in `quantize.cu`, one per format."""

COMPILE_OPTIONS = (
    "--fmad=false",
    "--ftz=false",
    "--prec-div=true",
    "--prec-sqrt=true",
    "--std=c++17",
)
"""NVRTC options: IEEE float32 arithmetic, each operation rounded on its own."""

DEFAULT_ARCH = "compute_90"
"""The virtual architecture the compile check targets when none is named."""


class KernelCompileError(RuntimeError):
    """NVRTC rejected a kernel source; the message carries NVRTC's log."""


def kernel_source(name: str = KERNEL_SOURCES[0]) -> str:
    """The text of one of the package's `.cu` files (installed as package data)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def load_nvrtc() -> ModuleType:
    """CuPy's NVRTC binding, imported on first use so that CuPy stays optional."""
    try:
        from cupy_backends.cuda.libs import nvrtc
    except ImportError as error:
        raise RuntimeError(
            "compiling the CUDA kernels needs CuPy and NVRTC: "
            "pip install 'rcompile[cuda]' (cupy-cuda13x and nvidia-cuda-nvrtc)"
        ) from error
    return nvrtc


def compile_source(source: str, name: str = "kernel.cu", arch: str = DEFAULT_ARCH) -> bytes:
    """Compile CUDA C source with `COMPILE_OPTIONS` for `arch`.

    `arch` `compute_XX` gives PTX (the driver finishes it on load); `sm_XX` gives a CUBIN for
    exactly that GPU. Raises KernelCompileError with the NVRTC log when the source does not
    compile.
    """
    nvrtc = load_nvrtc()
    program = nvrtc.createProgram(source, name, [], [])
    try:
        try:
            nvrtc.compileProgram(program, [f"--gpu-architecture={arch}", *COMPILE_OPTIONS])
        except nvrtc.NVRTCError as error:
            log = nvrtc.getProgramLog(program)
            raise KernelCompileError(
                f"NVRTC failed to compile {name} for {arch}:\n{log}"
            ) from error
        return nvrtc.getCUBIN(program) if arch.startswith("sm_") else nvrtc.getPTX(program)
    finally:
        nvrtc.destroyProgram(program)


def compile_kernels(arch: str = DEFAULT_ARCH) -> bytes:
    """Compile the package's kernels (`KERNEL_SOURCES`, joined) into one PTX or CUBIN."""
    source = "\n".join(kernel_source(name) for name in KERNEL_SOURCES)
    return compile_source(source, name=KERNEL_SOURCES[0], arch=arch)


def arch_for(compute_capability: int) -> str:
    """The NVRTC target for a GPU: its own CUBIN when NVRTC knows the GPU, else PTX for the
    newest architecture NVRTC knows below it (the driver compiles that PTX on load)."""
    supported = tuple(load_nvrtc().getSupportedArchs())
    if compute_capability in supported:
        return f"sm_{compute_capability}"
    older = [arch for arch in supported if arch <= compute_capability]
    if not older:
        raise RuntimeError(
            f"NVRTC supports architectures {supported}, none at or below the GPU's "
            f"compute capability {compute_capability}"
        )
    return f"compute_{max(older)}"
