"""The CUDA kernel sources compile with NVRTC into IEEE-exact code; no GPU needed."""

from __future__ import annotations

import re

import pytest

from rcompile.cuda_ops import (
    COMPILE_OPTIONS,
    KERNEL_NAMES,
    KERNEL_SOURCES,
    KernelCompileError,
    compile_kernels,
    compile_source,
    kernel_source,
)
from rcompile.cuda_ops.compile import arch_for

try:
    from cupy_backends.cuda.libs import nvrtc
except ImportError:
    pytest.skip("cupy_backends (CuPy's NVRTC binding) cannot be imported", allow_module_level=True)

# Turing, the oldest architecture CUDA 13 supports, and Hopper, the GPUs the tests run on.
ARCHES = ("compute_75", "compute_90")


@pytest.fixture(scope="module")
def ptx() -> str:
    return compile_kernels("compute_90").decode()


@pytest.mark.parametrize("name", KERNEL_SOURCES)
@pytest.mark.parametrize("arch", ARCHES)
def test_every_kernel_source_compiles_to_ptx(name: str, arch: str) -> None:
    assert b".entry" in compile_source(kernel_source(name), name=name, arch=arch)


def test_kernels_compile_to_a_cubin_without_a_gpu() -> None:
    assert compile_kernels("sm_90").startswith(b"\x7fELF")


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_every_format_has_its_kernel(ptx: str, kernel: str) -> None:
    assert re.search(rf"\.entry {kernel}\(", ptx)


def test_options_forbid_fast_math_and_contraction() -> None:
    assert "--fmad=false" in COMPILE_OPTIONS
    assert "--ftz=false" in COMPILE_OPTIONS
    assert not any("fast" in option for option in COMPILE_OPTIONS)


def test_ptx_keeps_subnormals(ptx: str) -> None:
    assert ".ftz" not in ptx


def test_ptx_rounds_every_float_operation_on_its_own(ptx: str) -> None:
    assert "fma." not in ptx
    arithmetic = re.findall(r"\b(?:add|sub|mul|div)\.[\w.]*f32\b", ptx)
    assert arithmetic
    assert all(op.endswith(".rn.f32") for op in arithmetic), sorted(set(arithmetic))


def test_ptx_divides_exactly(ptx: str) -> None:
    assert "div.rn.f32" in ptx
    assert "div.approx" not in ptx
    assert "div.full" not in ptx
    assert "rcp." not in ptx


def test_ptx_rounds_half_to_even_and_floors(ptx: str) -> None:
    assert "cvt.rni.f32.f32" in ptx  # rintf
    assert "cvt.rmi.f32.f32" in ptx  # floorf


def test_broken_source_fails_with_the_nvrtc_log() -> None:
    source = 'extern "C" __global__ void broken(float* x) { x[0] = undeclared_name; }'
    with pytest.raises(KernelCompileError, match="undeclared_name") as raised:
        compile_source(source, name="broken.cu")
    assert "broken.cu" in str(raised.value)


def test_a_known_gpu_gets_its_own_cubin() -> None:
    assert arch_for(90) == "sm_90"


def test_a_gpu_newer_than_nvrtc_gets_ptx_of_the_newest_known_architecture() -> None:
    assert arch_for(10_000) == f"compute_{max(nvrtc.getSupportedArchs())}"
