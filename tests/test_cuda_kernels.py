"""The CUDA kernels agree bit for bit with the NumPy reference quantizers.

Each agreement test runs on two backends:

- `cupy`: the kernels on a CUDA GPU through `quantize_cupy` (skipped: "no CUDA GPU");
- `host`: the same `quantize.cu`, compiled as host C++ by the system compiler behind a small
  shim for the CUDA built-ins, with contraction and fast math off. IEEE float32 on the CPU
  rounds as the GPU does under the kernels' compile options, so this checks the kernels'
  logic on machines without a GPU (skipped when there is no C++ compiler).

The inputs are the shared sweep (`conftest`: every float16 bit pattern and the float32
specials) plus, for every float32 exponent, mantissas at and beside a rounding tie at every
bit position. Outputs are compared as bits (`conftest.assert_same_bits`), so -0 differs from
+0; NaN matches any NaN, and DFP, which leaves NaN unspecified, is not compared there.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_same_bits, rounded_formats, sweep_formats, sweep_inputs
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from rcompile.cuda_ops import kernel_arguments, kernel_source, quantize_cupy, rounding_argument
from rcompile.formats import DFP, Format, MiniFloat, Pow2

try:
    import cupy
except ImportError:
    cupy = None

HAS_GPU = cupy is not None and cupy.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")

F32 = np.float32
Quantize = Callable[[Format, np.ndarray, "int | None"], np.ndarray]

HOST_SHIM = """
#include <math.h>
#include <string.h>
#define __global__
#define __device__
#define __forceinline__ inline
struct rcompile_dim3 { unsigned x; };
static const rcompile_dim3 blockIdx = {0}, threadIdx = {0}, blockDim = {1}, gridDim = {1};
static inline unsigned __float_as_uint(float v) { unsigned u; memcpy(&u, &v, 4); return u; }
static inline float __uint_as_float(unsigned u) { float v; memcpy(&v, &u, 4); return v; }
static inline int __clz(int v) { return __builtin_clz((unsigned)v); }
"""
HOST_FLAGS = ("-O2", "-std=c++17", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC")
_CTYPES = {
    np.dtype(np.int32): ctypes.c_int32,
    np.dtype(np.float32): ctypes.c_float,
    np.dtype(np.uint64): ctypes.c_uint64,
}


def _cupy_backend() -> Quantize:
    def run(fmt: Format, x: np.ndarray, seed: int | None) -> np.ndarray:
        return quantize_cupy(fmt, cupy.asarray(x), seed).get()

    return run


def _host_backend(directory: Path) -> Quantize:
    compiler = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if compiler is None:
        pytest.skip("no C++ compiler for the host build of quantize.cu")
    source, library = directory / "quantize_host.cpp", directory / "quantize_host.so"
    source.write_text(HOST_SHIM + kernel_source())
    subprocess.run([compiler, *HOST_FLAGS, str(source), "-o", str(library)], check=True)
    dll = ctypes.CDLL(str(library))

    def run(fmt: Format, x: np.ndarray, seed: int | None) -> np.ndarray:
        name, parameters = kernel_arguments(fmt)
        x = np.ascontiguousarray(x, dtype=F32)
        out = np.empty_like(x)
        kernel = getattr(dll, name)
        kernel.restype = None
        kernel.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_uint64,
            *(_CTYPES[p.dtype] for p in parameters),
            ctypes.c_int32,
            ctypes.c_uint64,
        ]
        kernel(
            x.ctypes.data,
            out.ctypes.data,
            x.size,
            *(p.item() for p in parameters),
            int(rounding_argument(fmt, seed)),
            0 if seed is None else seed & 0xFFFFFFFFFFFFFFFF,
        )
        return out

    return run


@pytest.fixture(scope="module", params=["cupy", "host"])
def quantize(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Quantize:
    if request.param == "cupy":
        if not HAS_GPU:
            pytest.skip("no CUDA GPU")
        return _cupy_backend()
    return _host_backend(tmp_path_factory.mktemp("host_kernels"))


def _bits(*patterns: int) -> np.ndarray:
    return np.array(patterns, dtype=np.uint32).view(F32)


def mantissa_patterns() -> np.ndarray:
    """Mantissas at, just below and just above a rounding tie at every bit position, with
    even and odd neighbours, and runs of leading ones (the saturation edges of codes)."""
    patterns = {0, 1, 0x7FFFFF, 0x400000, 0x3FFFFF, 0x400001}
    for j in range(23):
        tie = 1 << j
        patterns |= {tie, tie - 1, tie + 1, tie | 0x400000, tie | (tie << 1)}
        ones = 0x7FFFFF ^ ((1 << (23 - j)) - 1)
        patterns |= {ones, ones | (1 << (22 - j)), ones + 1, ones | 1}
    return np.array(sorted(p & 0x7FFFFF for p in patterns), dtype=np.uint32)


def structured_float32() -> np.ndarray:
    """Every finite exponent (subnormals included) with the mantissa patterns, both signs:
    the float32 ties and edges of every format, which float16 patterns reach only in part."""
    bits = ((np.arange(255, dtype=np.uint32) << 23)[:, None] | mantissa_patterns()).ravel()
    return np.concatenate([bits, bits | 0x80000000]).view(F32)


PROBE = np.concatenate([sweep_inputs(), structured_float32()])


def check(quantize: Quantize, fmt: Format, x: np.ndarray, seed: int | None = None) -> None:
    assert_same_bits(fmt, x, fmt.quantize(x, seed), quantize(fmt, x, seed))


@pytest.mark.parametrize("fmt", sweep_formats(), ids=lambda fmt: fmt.name)
def test_kernel_matches_reference_on_float16_patterns_and_float32_edges(
    quantize: Quantize, fmt: Format
) -> None:
    check(quantize, fmt, PROBE)


@pytest.mark.parametrize("fmt", rounded_formats(), ids=lambda fmt: fmt.name)
def test_every_rounding_mode_matches_reference_on_every_tie(quantize: Quantize, fmt: Format):
    check(quantize, fmt, PROBE)


@pytest.mark.parametrize("fmt", [MiniFloat(4, 3, "fn"), MiniFloat(5, 2, "ieee"), Pow2(-8, -1)])
def test_nan_passes_through_with_its_payload(quantize: Quantize, fmt: Format) -> None:
    nans = _bits(0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FC12345)
    assert (quantize(fmt, nans, None).view(np.uint32) == nans.view(np.uint32)).all()


STOCHASTIC_FORMATS = [
    DFP(2, 0),
    DFP(8, 5),
    DFP(8, 5, signed=False),
    DFP(16, 16),
    DFP(12, -8),
    MiniFloat(4, 3),
    MiniFloat(4, 3, "fn"),
    MiniFloat(5, 2, "ieee"),
    MiniFloat(8, 7, "ieee"),
    MiniFloat(2, 0),
    MiniFloat(8, 22),
    Pow2(-8, -1),
    Pow2(-8, -1, zero=False),
    Pow2(-126, 126),
]


@pytest.mark.parametrize("seed", [0, 1, 20251122, 2**63, 2**64 - 1])
@pytest.mark.parametrize("fmt", STOCHASTIC_FORMATS, ids=lambda fmt: fmt.name)
def test_stochastic_rounding_matches_reference(quantize: Quantize, fmt: Format, seed: int) -> None:
    check(quantize, fmt, PROBE, seed)


def test_negative_seed_is_its_64_bit_pattern(quantize: Quantize) -> None:
    fmt = MiniFloat(4, 3, "fn")
    assert_same_bits(fmt, PROBE, fmt.quantize(PROBE, 2**64 - 1), quantize(fmt, PROBE, -1))


@st.composite
def formats(draw: st.DrawFn) -> Format:
    kind = draw(st.sampled_from(["dfp", "minifloat", "pow2"]))
    try:
        if kind == "dfp":
            bw = draw(st.integers(2, 32))
            fl = draw(st.integers(*DFP.fl_range(bw)))
            return DFP(bw, fl, draw(st.booleans()))
        if kind == "minifloat":
            return MiniFloat(
                draw(st.integers(2, 8)),
                draw(st.integers(0, 23)),
                draw(st.sampled_from(["ristretto", "ieee", "fn"])),
            )
        exp_min, exp_max = sorted(draw(st.lists(st.integers(-126, 126), min_size=2, max_size=2)))
        return Pow2(exp_min, exp_max, draw(st.booleans()))
    except ValueError:
        assume(False)
        raise


float32_arrays = arrays(
    np.float32,
    array_shapes(min_dims=1, max_dims=3, max_side=40),
    elements=st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True),
)


@settings(max_examples=300, deadline=None)
@given(fmt=formats(), x=float32_arrays, seed=st.none() | st.integers(0, 2**64 - 1))
def test_random_arrays_match_reference(
    quantize: Quantize, fmt: Format, x: np.ndarray, seed: int | None
) -> None:
    check(quantize, fmt, x, seed)


@gpu
def test_gpu_keeps_shape_and_reads_strided_input_in_c_order() -> None:
    x = np.random.default_rng(0).standard_normal((64, 48), dtype=F32).T
    fmt = DFP(8, 5)
    out = quantize_cupy(fmt, cupy.asarray(np.ascontiguousarray(x.T)).T, seed=7)
    assert out.shape == x.shape and out.flags.c_contiguous
    assert_same_bits(fmt, x, fmt.quantize(x, 7), out.get())


@gpu
def test_gpu_grid_stride_loop_covers_a_large_array() -> None:
    x = np.random.default_rng(1).standard_normal(2**22 + 3, dtype=F32) * F32(4)
    for fmt in (DFP(8, 5), MiniFloat(4, 3, "fn"), Pow2(-8, -1)):
        for seed in (None, 5):
            expected = fmt.quantize(x, seed)
            assert_same_bits(fmt, x, expected, quantize_cupy(fmt, cupy.asarray(x), seed).get())


@gpu
def test_gpu_empty_array_gives_empty_array() -> None:
    assert quantize_cupy(DFP(8, 5), cupy.empty((0, 3), dtype=cupy.float32)).shape == (0, 3)


@gpu
def test_gpu_quantizes_a_zero_dimensional_array() -> None:
    x = np.array(2.5, dtype=F32)
    out = quantize_cupy(MiniFloat(4, 3, "fn"), cupy.asarray(x))
    assert out.shape == () and out.get().view(np.uint32) == x.view(np.uint32)


@gpu
def test_gpu_rejects_other_dtypes() -> None:
    with pytest.raises(TypeError, match="float32"):
        quantize_cupy(DFP(8, 5), cupy.zeros(4, dtype=cupy.float64))


@pytest.mark.skipif(HAS_GPU, reason="a CUDA GPU is present")
def test_without_a_gpu_quantize_cupy_says_so() -> None:
    with pytest.raises(RuntimeError, match=r"CUDA GPU|CuPy"):
        quantize_cupy(DFP(8, 5), np.zeros(4, dtype=F32))
