"""Shared inputs and comparisons for the agreement tests of the three implementations."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rcompile.formats import DFP, Format, MiniFloat, Pow2
from rcompile.onnx_ops import IR_VERSION, OPSET
from rcompile.search import evaluator as evaluator_module

F32 = np.float32


def float16_patterns() -> np.ndarray:
    """Every float16 bit pattern as float32: all zeros, subnormals, ties, infs and NaNs."""
    return np.arange(2**16, dtype=np.uint16).view(np.float16).astype(F32)


def float32_specials() -> np.ndarray:
    """Float32 values at the edges no float16 reaches."""
    bits = np.array(
        [
            0x00000000,
            0x80000000,  # +-0
            0x00000001,
            0x80000001,  # smallest subnormal
            0x007FFFFF,
            0x807FFFFF,  # largest subnormal
            0x00800000,
            0x80800000,  # smallest normal
            0x7F7FFFFF,
            0xFF7FFFFF,  # FLT_MAX
            0x7F800000,
            0xFF800000,  # +-inf
            0x7FC00000,
            0xFFC00000,
            0x7F800001,  # NaNs, one signalling
            0x3F3504F3,
            0x3F3504F4,
            0x3FB504F3,
            0x3FB504F4,  # either side of sqrt(2) / 2, sqrt(2)
            0x4B7FFFFF,
            0x4B800000,
            0x4C000001,  # around 2**24
        ],
        dtype=np.uint32,
    )
    return bits.view(F32)


def sweep_inputs() -> np.ndarray:
    return np.concatenate([float16_patterns(), float32_specials()])


# Mini floats of another exponent bias (scaled): finer and coarser than standard, native
# types among them, at the ends of the biases float32 holds.
SCALED_MINIFLOATS = [
    MiniFloat(4, 3, "fn", exponent_bias=16),
    MiniFloat(4, 3, "fn", exponent_bias=-3),
    MiniFloat(4, 3, "fn", exponent_bias=147),
    MiniFloat(5, 2, "ieee", exponent_bias=22),
    MiniFloat(5, 10, "ieee", exponent_bias=25),
    MiniFloat(5, 10, "ieee", exponent_bias=-96),
    MiniFloat(8, 7, "ieee", exponent_bias=140),
    MiniFloat(4, 3, exponent_bias=12),
    MiniFloat(3, 2, "ieee", exponent_bias=-1),
]


def sweep_formats() -> list[Format]:
    """The parameter sweep of the agreement tests."""
    formats: list[Format] = [
        DFP(bw, fl, signed)
        for bw in range(2, 17)
        for fl in range(-8, 17)
        for signed in (True, False)
    ]
    formats += [DFP(bw, fl) for bw in (17, 24, 25, 26, 32) for fl in (-8, 0, 5, 16)]
    formats += [
        MiniFloat(exp_bits, mant_bits, variant)
        for exp_bits in range(2, 9)
        for mant_bits in range(0, 11)
        for variant in ("ristretto", "ieee", "fn")
        if not (variant == "fn" and (mant_bits == 0 or exp_bits == 8))
    ]
    formats += [MiniFloat(8, 22), MiniFloat(8, 23, "ieee"), MiniFloat(7, 23, "fn")]
    formats += SCALED_MINIFLOATS
    ranges = [(-8, -1), (-4, 3), (0, 0), (-20, -10), (-126, 126)]
    formats += [Pow2(low, high, zero) for low, high in ranges for zero in (True, False)]
    return formats


def rounded_formats() -> list[Format]:
    """DFP and mini-float formats in every rounding mode but half to even."""
    bases = (
        DFP(8, 3),
        DFP(8, 4, signed=False),
        DFP(4, -2),
        DFP(16, 12),
        DFP(24, 0),
        MiniFloat(4, 3, "fn"),
        MiniFloat(5, 2, "ieee"),
        MiniFloat(3, 2),
        MiniFloat(5, 10, "ieee"),
        MiniFloat(8, 7, "ieee"),
        MiniFloat(2, 0),
    )
    return [replace(fmt, rounding=mode) for mode in ("away", "up", "floor") for fmt in bases]


def assert_same_bits(fmt: Format, x: np.ndarray, expected: np.ndarray, actual: np.ndarray) -> None:
    """Bit equality, NaN matching any NaN; DFP's NaN results are unspecified and skipped."""
    expected = np.asarray(expected, dtype=F32)
    actual = np.asarray(actual, dtype=F32)
    assert expected.shape == actual.shape
    same = (expected.view(np.uint32) == actual.view(np.uint32)) | (
        np.isnan(expected) & np.isnan(actual)
    )
    if isinstance(fmt, DFP):
        same |= np.isnan(x)
    if not same.all():
        where = np.flatnonzero(~same)[:5]
        pytest.fail(
            f"{fmt.name}: {(~same).sum()} of {same.size} differ, e.g. x={x.ravel()[where]} "
            f"expected={expected.ravel()[where]} actual={actual.ravel()[where]}"
        )


def make_model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    """A small checked model at rcompile's opset, for tests that build their own graphs."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def tensor(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


@pytest.fixture
def ctrl_c_after_20(monkeypatch) -> None:
    """Ctrl-C during the 21st evaluation of a search (layerwise: after the uniform widths)."""
    evaluate = evaluator_module.Evaluator.evaluate
    calls = []

    def interrupted_after_20(self, configuration):
        calls.append(configuration.label)
        if len(calls) > 20:
            raise KeyboardInterrupt
        return evaluate(self, configuration)

    monkeypatch.setattr(evaluator_module.Evaluator, "evaluate", interrupted_after_20)


ROOT = Path(__file__).resolve().parents[1]


def rcompile_run(*args: object, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`python -m rcompile ARGS` as a user runs it, stdout and stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "rcompile", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@dataclass(frozen=True)
class LenetRun:
    """LeNet-5 compiled through the CLI and scored on its test images."""

    model: onnx.ModelProto
    fp32_top1: float
    top1: float
    options: dict


def lenet_runs(tmp_path: Path, flags: tuple[str, ...], *args: object) -> dict[str, LenetRun]:
    """Compile LeNet-5 once per flag in `flags` (with `args` for every run), each checked
    to succeed: {flag: LenetRun}."""
    runs = {}
    for flag in flags:
        path = tmp_path / f"{flag.strip('-')}.onnx"
        result = rcompile_run(
            "models/lenet5.onnx",
            "-o",
            path,
            "--calib",
            "models/mnist_calib.npz",
            "--val",
            "models/mnist_test.npz",
            *args,
            flag,
        )
        assert result.returncode == 0, result.stderr
        model = onnx.load(path)
        accuracy = json.loads(path.with_suffix(".report.json").read_text())["accuracy"]
        options = next(p.value for p in model.metadata_props if p.key == "rcompile.options")
        runs[flag] = LenetRun(
            model, accuracy["fp32"]["top1"], accuracy["quantized"]["top1"], json.loads(options)
        )
    return runs
